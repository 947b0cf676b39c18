// libFuzzer harness: the peer-link handshake, fed by a peer that writes what it likes.
//
// Two levels, chosen by the first input byte:
//
//   parser: the bytes go as one SOCK_SEQPACKET message (with 0-3 fds of assorted kinds) to
//     hello_recv(). Checked: it never returns more than 2 fds, every fd it did not return is
//     closed (no fd leaks), a message it accepts has a valid id and a text within bounds.
//
//   member: a real Member listens in a bus directory; the fuzzer connects to it like another
//     member and sends a script of handshake messages, raw bytes or hello_send() with fuzzed
//     fields, each with fds of a fuzzed kind (a sealed memfd of the announced size, one of
//     another size, an unsealed one, eventfds, pipes, ...). If the member brings the link up,
//     the fuzzer writes fuzzed bytes into the ring it handed over (header included) and rings
//     the doorbell, as a hostile peer would. Then it hangs up. Checked: the member neither
//     crashes nor reads out of bounds, the link is gone after the hang-up, and the member's
//     process holds exactly the fds it held before.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "../doorbell.h"
#include "../handshake.h"
#include "../member.h"
#include "../ring.h"
#include "fuzz_input.h"
#include "../segment.h"

using namespace shmbus;

namespace {

using fuzz::die;
using fuzz::Input;

int count_fds() {
  int n = 0;
  DIR* d = opendir("/proc/self/fd");
  while (readdir(d) != nullptr) n++;
  closedir(d);
  return n;
}

// Fds of a fuzzed kind to send along with a message. `ring_bytes` is the capacity the message
// announces; *ring_fd / *ring_base get the ring the peer keeps writing into, if it made one.
std::vector<int> make_fds(uint8_t kind, uint64_t ring_bytes, int* ring_fd) {
  std::vector<int> fds;
  std::string err;
  auto memfd = [&](size_t bytes, bool seal) {
    int fd = memfd_create("fuzz", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return -1;
    if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
      close(fd);
      return -1;
    }
    if (seal) fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
    return fd;
  };
  const size_t right = ring_capacity_ok(ring_bytes) ? ring_mapping_bytes(ring_bytes) : 8192;
  switch (kind % 9) {
    case 0:
      break;
    case 1:
    case 2:
    case 3: {  // what a member sends: a sealed ring of the announced size and an eventfd
      int fd = memfd(right, true);
      if (fd >= 0) {
        fds.push_back(fd);
        *ring_fd = fd;
      }
      fds.push_back(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      break;
    }
    case 4:  // a ring that is not sealed (the peer could shrink it: SIGBUS)
      fds.push_back(memfd(right, false));
      fds.push_back(eventfd(0, EFD_CLOEXEC));
      break;
    case 5:  // sealed, but smaller than announced
      fds.push_back(memfd(right / 2, true));
      fds.push_back(eventfd(0, EFD_CLOEXEC));
      break;
    case 6: {  // the wrong kinds: a pipe for both
      int p[2];
      if (pipe2(p, O_CLOEXEC) == 0) {
        fds.push_back(p[0]);
        fds.push_back(p[1]);
      }
      break;
    }
    case 7:  // ring and doorbell swapped
      fds.push_back(eventfd(0, EFD_CLOEXEC));
      fds.push_back(memfd(right, true));
      break;
    case 8:  // three fds, one more than any handshake carries
      fds.push_back(memfd(right, true));
      fds.push_back(eventfd(0, EFD_CLOEXEC));
      fds.push_back(eventfd(0, EFD_CLOEXEC));
      break;
  }
  std::vector<int> ok;
  for (int fd : fds)
    if (fd >= 0) ok.push_back(fd);
  return ok;
}

bool send_raw(int sock, const void* bytes, size_t len, const std::vector<int>& fds) {
  struct iovec iov = {const_cast<void*>(bytes), len};
  struct msghdr msg;
  std::memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(struct cmsghdr) char control[CMSG_SPACE(4 * sizeof(int))];
  if (!fds.empty()) {
    std::memset(control, 0, sizeof control);
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(fds.size() * sizeof(int));
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(fds.size() * sizeof(int));
    std::memcpy(CMSG_DATA(c), fds.data(), fds.size() * sizeof(int));
  }
  return sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT) >= 0;
}

// ---- parser level -------------------------------------------------------------------------------

void parser(Input& in) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return;
  const int before = count_fds();
  int unused = -1;
  std::vector<int> fds = make_fds(in.u8(), in.u64(), &unused);
  std::vector<uint8_t> bytes(in.n > 1024 ? 1024 : in.n);
  in.take(bytes.data(), bytes.size());
  bool sent = send_raw(sv[0], bytes.data(), bytes.size(), fds);
  for (int fd : fds) close(fd);
  Hello h;
  int got[2] = {-1, -1};
  int nfds = -1;
  std::string err;
  RecvResult r = hello_recv(sv[1], &h, got, &nfds, &err);
  REQUIRE(nfds >= 0 && nfds <= 2);
  if (sent) REQUIRE(r == kRecvMessage || r == kRecvEof);
  for (int i = 0; i < nfds; i++) {
    REQUIRE(fcntl(got[i], F_GETFD) >= 0);
    close(got[i]);
  }
  if (r == kRecvMessage && err.empty()) {
    REQUIRE(id_valid(h.id));
    REQUIRE(h.text.size() <= 160);
    REQUIRE(h.version == kProtocolVersion);
  }
  (void)id_compare(h.id, "1");
  REQUIRE(count_fds() == before);
  close(sv[0]);
  close(sv[1]);
}

// ---- member level -------------------------------------------------------------------------------

struct Node : Reactor, MemberEvents {
  std::map<int, void*> fds;
  std::map<uint32_t, std::string> up;
  std::vector<uint8_t> large;
  std::map<uint32_t, size_t> assembling;  // slots with a large message begun and not ended/dropped
  size_t messages = 0;
  void watch(int fd, void* tag) override { fds[fd] = tag; }
  void unwatch(int fd, void*) override { fds.erase(fd); }
  void link_up(uint32_t slot, const std::string& id) override {
    REQUIRE(id_valid(id));
    up[slot] = id;
  }
  void link_down(uint32_t slot, const std::string&) override {
    REQUIRE(up.count(slot) == 1);
    // The buffer of a message begun on this link must have been given back (drop_large) first:
    // the binding keeps it alive until then.
    if (assembling.count(slot) != 0) die("link down with a large message still held (no drop_large)");
    up.erase(slot);
  }
  void ready() override {}
  void error(const std::string&, const std::string&) override {}
  void writable() override {}
  void message(uint32_t slot, const uint8_t* d, size_t n) override {
    REQUIRE(up.count(slot) == 1);
    volatile uint8_t sum = 0;
    for (size_t i = 0; i < n; i++) sum = static_cast<uint8_t>(sum + d[i]);
    messages++;
  }
  uint8_t* begin_large(uint32_t slot, size_t total) override {
    REQUIRE(total <= (size_t{1} << 20) + (size_t{64} << 10));
    REQUIRE(assembling.count(slot) == 0);
    assembling[slot] = total;
    large.assign(total, 0);
    return large.data();
  }
  void end_large(uint32_t slot) override {
    REQUIRE(assembling.erase(slot) == 1);
    large.clear();
  }
  void drop_large(uint32_t slot) override {
    assembling.erase(slot);
    large.clear();
  }
  Member member{*this, *this};
};

Node* node = nullptr;
std::string dir;
int baseline_fds = 0;

void turn(int timeout_ms) {
  std::vector<struct pollfd> pfds;
  std::vector<void*> tags;
  for (auto& e : node->fds) {
    pfds.push_back({e.first, POLLIN, 0});
    tags.push_back(e.second);
  }
  ::poll(pfds.data(), pfds.size(), timeout_ms);
  for (size_t i = 0; i < pfds.size(); i++) {
    if (pfds[i].revents == 0) continue;
    auto it = node->fds.find(pfds[i].fd);
    if (it != node->fds.end() && it->second == tags[i]) node->member.on_readable(tags[i]);
  }
  node->member.poll();
  node->member.park();
}

void setup_member() {
  char tmpl[] = "/tmp/shmbus-fuzz-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) die("mkdtemp");
  dir = tmpl;
  node = new Node;
  MemberOptions o;
  o.dir = dir;
  o.id = "victim";
  o.ring_capacity = 8192;
  o.max_message = 1 << 20;
  o.notify_bytes = 4096;
  std::string err;
  if (node->member.start(o, &err) != Member::kStarted) die(err.c_str());
  baseline_fds = count_fds();
}

void member_level(Input& in) {
  if (node == nullptr) setup_member();
  // Counted here, not once at setup: libFuzzer opens fds of its own between runs (leak checks).
  // Every run ends with the member holding no link, so this is the member's idle set.
  baseline_fds = count_fds();
  int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  struct sockaddr_un sa = {};
  sa.sun_family = AF_UNIX;
  std::snprintf(sa.sun_path, sizeof sa.sun_path, "%s/victim.sock", dir.c_str());
  if (connect(s, reinterpret_cast<struct sockaddr*>(&sa), sizeof sa) != 0) die("connect");
  turn(0);  // accept
  int ring_fd = -1;
  uint64_t ring_bytes = 0;
  int steps = 0;
  while (!in.empty() && steps++ < 4) {
    uint8_t how = in.u8();
    uint64_t announced = (how & 0x10) ? in.u64() : (uint64_t{4096} << (in.u8() % 4));
    int my_ring = -1;
    std::vector<int> fds = make_fds(in.u8(), announced, &my_ring);
    if (how & 0x01) {  // raw bytes
      std::vector<uint8_t> bytes(in.u16() % 600);
      bytes.resize(in.take(bytes.data(), bytes.size()));
      send_raw(s, bytes.data(), bytes.size(), fds);
    } else {  // a well-formed message with fuzzed fields
      Hello h;
      h.version = (how & 0x20) ? in.u32() : kProtocolVersion;
      h.kind = (how & 0x40) ? in.u32() : kHello;
      h.ring_bytes = announced;
      h.code = in.u8();
      h.id = (how & 0x80) ? in.str(70) : std::string("peer") + std::to_string(in.u8() % 3);
      h.text = in.str(200);
      std::string err;
      hello_send(s, h, fds.size() > 0 ? fds[0] : -1, fds.size() > 1 ? fds[1] : -1, &err);
    }
    for (int fd : fds)
      if (fd != my_ring) close(fd);
    if (my_ring >= 0) {
      if (ring_fd >= 0) close(ring_fd);
      ring_fd = my_ring;
      ring_bytes = announced;
    } else if (my_ring < 0 && ring_fd < 0) {
      ring_bytes = 0;
    }
    turn(0);
  }
  // If the member linked up with our ring, write into it as a hostile producer.
  if (!node->up.empty() && ring_fd >= 0 && ring_capacity_ok(ring_bytes)) {
    // Take the member's answer (its ring and doorbell) so that we can ring its doorbell.
    Hello w;
    int got[2];
    int nfds = 0;
    std::string err;
    int bell = -1;
    while (hello_recv(s, &w, got, &nfds, &err) == kRecvMessage) {
      for (int i = 0; i < nfds; i++) {
        if (i == 1 && bell < 0) bell = got[i];
        else close(got[i]);
      }
    }
    size_t bytes = ring_mapping_bytes(ring_bytes);
    void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, ring_fd, 0);
    if (base != MAP_FAILED) {
      auto* p = static_cast<uint8_t*>(base);
      while (!in.empty()) {
        uint8_t op = in.u8();
        if (op & 1) {  // a plausible record at the tail, then publish it
          auto* hdr = static_cast<RingHeader*>(base);
          uint64_t tail = hdr->tail;
          size_t off = kRingHeaderBytes + static_cast<size_t>(tail & (ring_bytes - 1));
          uint32_t length = in.u16(), type = in.u8() % 7;
          if (off + 8 <= bytes) {
            std::memcpy(p + off, &length, 4);
            std::memcpy(p + off + 4, &type, 4);
            size_t room = bytes - off - 8;
            size_t k = in.u8();
            in.take(p + off + 8, k < room ? k : room);
          }
          __atomic_store_n(&hdr->tail, tail + ((length + 7u) & ~7u), __ATOMIC_RELEASE);
        } else {  // bytes anywhere
          size_t off = in.u16() % bytes;
          size_t k = in.u8() % 32;
          in.take(p + off, k < bytes - off ? k : bytes - off);
        }
        if (bell >= 0) doorbell_ring(bell);
        turn(0);
      }
      munmap(base, bytes);
    }
    if (bell >= 0) close(bell);
  }
  if (ring_fd >= 0) close(ring_fd);
  close(s);
  int now = count_fds();
  for (int i = 0; i < 50 && (!node->up.empty() || now != baseline_fds); i++) {
    turn(1);
    now = count_fds();
  }
  REQUIRE(node->up.empty());
  REQUIRE(node->member.open());
  if (now != baseline_fds) {
    std::fprintf(stderr, "member holds %d fds, %d before\n", now, baseline_fds);
    std::string cmd = "ls -l /proc/" + std::to_string(getpid()) + "/fd >&2";
    if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "(no fd listing)\n");
    die("fd leak");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in{data, size};
  if (in.u8() & 1) member_level(in);
  else parser(in);
  return 0;
}
