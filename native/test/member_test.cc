// Members of one bus in one process, each on a poll(2) loop: discovery, handshake, messages
// both ways (small, and larger than the ring), a duplicate id, a stale socket, a peer that
// leaves, a peer of another protocol version, bytes that are not a handshake, and a bus
// directory that is not private. fds are counted before and after.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../bus_dir.h"
#include "../doorbell.h"
#include "../segment.h"
#include "../handshake.h"
#include "../member.h"
#include "test.h"

using namespace shmbus;

namespace {

struct Node : Reactor, MemberEvents {
  std::map<int, void*> fds;
  std::map<uint32_t, std::string> up;
  std::vector<std::string> downs, errors;
  std::map<std::string, std::vector<std::vector<uint8_t>>> got;
  std::vector<uint8_t> large;
  bool is_ready = false;
  int writables = 0;

  void watch(int fd, void* tag) override { fds[fd] = tag; }
  void unwatch(int fd, void*) override { fds.erase(fd); }
  void link_up(uint32_t slot, const std::string& id) override { up[slot] = id; }
  void link_down(uint32_t slot, const std::string& id) override {
    up.erase(slot);
    downs.push_back(id);
  }
  void ready() override { is_ready = true; }
  void error(const std::string&, const std::string& message) override { errors.push_back(message); }
  void writable() override { writables++; }
  void message(uint32_t slot, const uint8_t* d, size_t n) override { got[up[slot]].emplace_back(d, d + n); }
  uint8_t* begin_large(uint32_t, size_t total) override {
    large.assign(total, 0);
    return large.data();
  }
  void end_large(uint32_t slot) override { got[up[slot]].push_back(large); }
  void drop_large(uint32_t) override { large.clear(); }
  std::string member_id;
  Member member{*this, *this};  // last: it unwatches its fds as it goes
  uint32_t slot_of(const std::string& id) {
    for (auto& e : up)
      if (e.second == id) return e.first;
    return 0;
  }
};

// One turn of every node's loop: wait up to timeout_ms for any fd, dispatch, poll the rings.
void turn(std::vector<Node*> nodes, int timeout_ms = 20) {
  std::vector<struct pollfd> pfds;
  std::vector<std::pair<Node*, void*>> who;
  for (Node* n : nodes)
    for (auto& e : n->fds) {
      pfds.push_back({e.first, POLLIN, 0});
      who.push_back({n, e.second});
    }
  poll(pfds.data(), pfds.size(), timeout_ms);
  for (size_t i = 0; i < pfds.size(); i++) {
    if (pfds[i].revents == 0) continue;
    Node* n = who[i].first;
    if (n->fds.count(pfds[i].fd) && n->fds[pfds[i].fd] == who[i].second) n->member.on_readable(who[i].second);
  }
  for (Node* n : nodes) {
    if (!n->member.open()) continue;
    n->member.poll();
    n->member.park();
  }
}

template <typename F>
void run_until(std::vector<Node*> nodes, F done) {
  for (int i = 0; i < 1000 && !done(); i++) turn(nodes);
  CHECK(done());
}

int count_fds() {
  int n = 0;
  DIR* d = opendir("/proc/self/fd");
  while (readdir(d) != nullptr) n++;
  closedir(d);
  return n;
}

std::string make_dir() {
  char tmpl[] = "/tmp/shmbus-member-test-XXXXXX";
  CHECK(mkdtemp(tmpl) != nullptr);
  return tmpl;
}

MemberOptions options(const std::string& dir, const std::string& id) {
  MemberOptions o;
  o.dir = dir;
  o.id = id;
  o.ring_capacity = 64 << 10;
  o.max_message = 8 << 20;
  o.notify_bytes = 32 << 10;
  return o;
}

std::vector<uint8_t> bytes(size_t n, uint32_t seq) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; i++) v[i] = static_cast<uint8_t>(seq + i * 13);
  if (n >= 4) std::memcpy(v.data(), &seq, 4);
  return v;
}

void send(Node& from, const std::string& to, const std::vector<uint8_t>& msg) {
  Part part = {msg.data(), msg.size()};
  auto r = from.member.send(from.slot_of(to), &part, 1, msg.size());
  CHECK(r == Member::kSent || r == Member::kQueued);
}

int raw_connect(const std::string& dir, const std::string& id) {
  int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  struct sockaddr_un sa = {};
  sa.sun_family = AF_UNIX;
  std::snprintf(sa.sun_path, sizeof sa.sun_path, "%s/%s.sock", dir.c_str(), id.c_str());
  CHECK(connect(s, reinterpret_cast<struct sockaddr*>(&sa), sizeof sa) == 0);
  return s;
}


// A fake member: a listening socket at <dir>/<id>.sock and what a HELLO/WELCOME carries.
struct FakePeer {
  std::string id;
  int listen_fd = -1;
  int ring_fd = -1;
  int bell_fd = -1;
  FakePeer(const std::string& dir, const std::string& peer_id) : id(peer_id) {
    listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {};
    sa.sun_family = AF_UNIX;
    std::snprintf(sa.sun_path, sizeof sa.sun_path, "%s/%s.sock", dir.c_str(), id.c_str());
    CHECK(bind(listen_fd, reinterpret_cast<struct sockaddr*>(&sa), sizeof sa) == 0);
    CHECK(listen(listen_fd, 8) == 0);
    std::string err;
    ring_fd = segment_create("fake-ring", ring_mapping_bytes(64 << 10), &err);
    void* base = segment_map(ring_fd, ring_mapping_bytes(64 << 10), &err);
    ring_init(base, 64 << 10);
    segment_unmap(base, ring_mapping_bytes(64 << 10));
    bell_fd = doorbell_create();
  }
  ~FakePeer() {
    close(listen_fd);
    close(ring_fd);
    close(bell_fd);
  }
  bool send(int sock, uint32_t kind) {
    Hello h;
    h.kind = kind;
    h.ring_bytes = 64 << 10;
    h.id = id;
    std::string err;
    return hello_send(sock, h, ring_fd, bell_fd, &err);
  }
};

bool readable(int fd, int ms) {
  struct pollfd p = {fd, POLLIN, 0};
  return poll(&p, 1, ms) == 1;
}

// Two members that connect to each other at once keep one link: the one the lower id began.
void test_tie() {
  std::string dir = make_dir();
  std::string err;
  for (const char* other : {"3", "9"}) {
    mkdir(dir.c_str(), 0700);  // the last member out removed it
    FakePeer fake(dir, other);
    Node a;
    CHECK(a.member.start(options(dir, "5"), &err) == Member::kStarted);
    CHECK(a.member.initial_pending() == 1);  // a's HELLO waits in fake's backlog
    int from_a = accept(fake.listen_fd, nullptr, nullptr);
    CHECK(from_a >= 0);
    int to_a = raw_connect(dir, "5");
    CHECK(fake.send(to_a, kHello));
    run_until({&a}, [&] { return readable(to_a, 0); });
    Hello answer;
    int fds[2], n;
    CHECK(hello_recv(to_a, &answer, fds, &n, &err) == kRecvMessage);
    for (int i = 0; i < n; i++) close(fds[i]);
    if (std::string(other) == "3") {
      // 3 < 5: a takes 3's link and drops its own.
      CHECK(answer.kind == kWelcome && answer.id == "5");
      run_until({&a}, [&] { return a.is_ready && a.slot_of("3") != 0; });
      CHECK(readable(from_a, 1000));
      char buf[512];
      while (recv(from_a, buf, sizeof buf, MSG_DONTWAIT) > 0) {
      }
      CHECK(recv(from_a, buf, sizeof buf, MSG_DONTWAIT) == 0);  // a closed its own link
    } else {
      // 9 > 5: a refuses 9's link and keeps its own, which 9 now answers.
      CHECK(answer.kind == kRefuse && answer.code == kRefuseDuplicateLink);
      Hello hello;
      CHECK(readable(from_a, 1000));
      CHECK(hello_recv(from_a, &hello, fds, &n, &err) == kRecvMessage && hello.kind == kHello);
      for (int i = 0; i < n; i++) close(fds[i]);
      CHECK(fake.send(from_a, kWelcome));
      run_until({&a}, [&] { return a.is_ready && a.slot_of("9") != 0; });
    }
    CHECK(a.up.size() == 1 && a.errors.empty());
    close(from_a);
    close(to_a);
    run_until({&a}, [&] { return a.downs.size() == 1; });
  }
  std::string cmd = "rm -rf " + dir;
  CHECK(system(cmd.c_str()) == 0);
}

// One step of a random interleaving of the members of a bus: one member, picked at random, takes
// the fds that are ready now in a random order, then polls its rings. A member that is not
// picked is one that the scheduler left waiting, as a loaded machine does.
void random_step(std::vector<Node*>& nodes, std::mt19937& rng) {
  Node* n = nodes[rng() % nodes.size()];
  if (!n->member.open()) return;
  std::vector<struct pollfd> pfds;
  std::vector<void*> tags;
  for (auto& e : n->fds) {
    pfds.push_back({e.first, POLLIN, 0});
    tags.push_back(e.second);
  }
  poll(pfds.data(), pfds.size(), 0);
  std::vector<size_t> ready;
  for (size_t i = 0; i < pfds.size(); i++)
    if (pfds[i].revents != 0) ready.push_back(i);
  std::shuffle(ready.begin(), ready.end(), rng);
  for (size_t i : ready) {
    auto it = n->fds.find(pfds[i].fd);
    if (it != n->fds.end() && it->second == tags[i]) n->member.on_readable(tags[i]);
  }
  n->member.poll();
  n->member.park();
}

bool linked_all(std::vector<Node*>& nodes) {
  for (Node* n : nodes)
    for (Node* m : nodes)
      if (n != m && n->slot_of(m->member_id) == 0) return false;
  return true;
}

// Members that list each other at once all connect to each other at once; whatever order their
// loops then run in, every pair ends up with one link, up at both ends, and stays so. (Each
// member lists the directory once more after all have bound, as happens when all bind before
// any lists.)
void test_join_at_once() {
  std::string err;
  for (int trial = 0; trial < 600; trial++) {
    std::mt19937 rng(trial);
    std::string dir = make_dir();
    {
      int members = 2 + trial % 3;
      std::vector<std::unique_ptr<Node>> owned;
      std::vector<Node*> nodes;
      for (int i = 0; i < members; i++) {
        owned.push_back(std::make_unique<Node>());
        nodes.push_back(owned.back().get());
        nodes.back()->member_id = std::to_string(3 + 2 * i);
        CHECK(nodes.back()->member.start(options(dir, nodes.back()->member_id), &err) ==
              Member::kStarted);
      }
      for (Node* n : nodes) n->member.rescan();
      int steps = 0;
      while (!linked_all(nodes) && steps < 20000) {
        random_step(nodes, rng);
        steps++;
        if (steps % 2000 == 0) usleep(2000);  // a retry waits on its timer
      }
      if (!linked_all(nodes)) {
        for (Node* n : nodes) {
          std::fprintf(stderr, "trial %d member %s links:", trial, n->member_id.c_str());
          for (auto& e : n->up) std::fprintf(stderr, " %s", e.second.c_str());
          std::fprintf(stderr, "\n");
        }
      }
      CHECK(linked_all(nodes));
      for (int i = 0; i < 200; i++) random_step(nodes, rng);
      CHECK(linked_all(nodes));
      for (Node* n : nodes) {
        CHECK(n->up.size() == nodes.size() - 1);
        CHECK(n->errors.empty() && n->downs.empty());
        CHECK(n->is_ready || n->member.initial_pending() == 0);
      }
    }
    std::string cmd = "rm -rf " + dir;
    CHECK(system(cmd.c_str()) == 0);
  }
}

// A connection that never sends its HELLO is closed after hello_timeout_ms, and costs nothing
// after; a connect that finds the member's backlog full is retried until it gets through.
void test_silent_and_full_backlog() {
  const int fds_before = count_fds();
  std::string dir = make_dir();
  std::string err;
  {
    Node a;
    MemberOptions o = options(dir, "1");
    o.hello_timeout_ms = 100;
    CHECK(a.member.start(o, &err) == Member::kStarted);
    const int fds_started = count_fds();
    std::vector<int> silent;
    for (int i = 0; i < 20; i++) silent.push_back(raw_connect(dir, "1"));
    run_until({&a}, [&] {
      for (int s : silent)
        if (!readable(s, 0)) return false;
      return true;
    });
    char c;
    for (int s : silent) {
      CHECK(recv(s, &c, 1, MSG_DONTWAIT) == 0);  // closed by a
      close(s);
    }
    CHECK(count_fds() == fds_started);
    CHECK(a.errors.empty() && a.up.empty());

    // b's listener takes one connection at most; fill it, then have a connect to b.
    FakePeer b(dir, "2");
    CHECK(listen(b.listen_fd, 0) == 0);
    std::vector<int> fillers;
    for (int i = 0; i < 8; i++) {
      int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      struct sockaddr_un sa = {};
      sa.sun_family = AF_UNIX;
      std::snprintf(sa.sun_path, sizeof sa.sun_path, "%s/2.sock", dir.c_str());
      if (connect(s, reinterpret_cast<struct sockaddr*>(&sa), sizeof sa) != 0) {
        CHECK(errno == EAGAIN);
        close(s);
        break;
      }
      fillers.push_back(s);
    }
    CHECK(!fillers.empty() && fillers.size() < 8);
    a.member.rescan();
    CHECK(a.member.initial_pending() == 0);
    for (int i = 0; i < 5; i++) turn({&a});  // a few retries that find the backlog full
    for (size_t i = 0; i < fillers.size(); i++) {
      int s = accept(b.listen_fd, nullptr, nullptr);
      CHECK(s >= 0);
      close(s);
      close(fillers[i]);
    }
    int from_a = -1;
    run_until({&a}, [&] {
      if (from_a < 0 && readable(b.listen_fd, 0)) from_a = accept(b.listen_fd, nullptr, nullptr);
      return from_a >= 0 && readable(from_a, 0);
    });
    Hello hello;
    int got[2], n;
    CHECK(hello_recv(from_a, &hello, got, &n, &err) == kRecvMessage && hello.kind == kHello &&
          hello.id == "1");
    for (int i = 0; i < n; i++) close(got[i]);
    CHECK(b.send(from_a, kWelcome));
    run_until({&a}, [&] { return a.slot_of("2") != 0; });
    close(from_a);
    run_until({&a}, [&] { return a.downs.size() == 1; });
    CHECK(a.errors.empty());
  }
  CHECK(count_fds() == fds_before);
  std::string cmd = "rm -rf " + dir;
  CHECK(system(cmd.c_str()) == 0);
}

// The last member out removes the bus directory; a member that opens after (or while) it goes
// makes it again; stale lock files of members that died are removed by the next one to join.
void test_directory_life() {
  std::string dir = make_dir();
  std::string err;
  for (int round = 0; round < 50; round++) {
    Node a;
    CHECK(a.member.start(options(dir, "1"), &err) == Member::kStarted);  // made again after round 0
    a.member.close();
    CHECK(access(dir.c_str(), F_OK) != 0);
  }
  CHECK(mkdir(dir.c_str(), 0700) == 0);
  int stale = open((dir + "/7.lock").c_str(), O_CREAT | O_RDWR, 0600);  // a member that died
  CHECK(stale >= 0);
  close(stale);
  {
    Node b;
    CHECK(b.member.start(options(dir, "2"), &err) == Member::kStarted);
    CHECK(access((dir + "/7.lock").c_str(), F_OK) != 0);
    CHECK(access((dir + "/2.lock").c_str(), F_OK) == 0);
  }
  CHECK(access(dir.c_str(), F_OK) != 0);
}

void test_bus() {
  const int fds_before = count_fds();
  std::string dir = make_dir();
  std::string err;
  {
    Node a, b;
    CHECK(a.member.start(options(dir, "1"), &err) == Member::kStarted);
    CHECK(a.member.initial_pending() == 0);
    CHECK(b.member.start(options(dir, "worker_b"), &err) == Member::kStarted);
    CHECK(b.member.initial_pending() == 1);
    run_until({&a, &b}, [&] { return b.is_ready && a.slot_of("worker_b") && b.slot_of("1"); });

    // Both ends of the link use the rings' light mode where the kernel allows membarrier.
    CHECK(a.member.light(a.slot_of("worker_b")) == ring_light_barriers());
    CHECK(b.member.light(b.slot_of("1")) == ring_light_barriers());

    // The id is held while its member lives.
    Node dup;
    CHECK(dup.member.start(options(dir, "1"), &err) == Member::kDuplicate);

    // Small messages both ways, FIFO, then messages larger than the ring.
    for (uint32_t i = 0; i < 5000; i++) {
      send(a, "worker_b", bytes(8 + i % 500, i));
      send(b, "1", bytes(8 + i % 300, i));
      if (i % 100 == 0) turn({&a, &b}, 0);
    }
    run_until({&a, &b}, [&] { return a.got["worker_b"].size() == 5000 && b.got["1"].size() == 5000; });
    for (uint32_t i = 0; i < 5000; i++) {
      CHECK(b.got["1"][i] == bytes(8 + i % 500, i));
      CHECK(a.got["worker_b"][i] == bytes(8 + i % 300, i));
    }
    b.got.clear();
    for (uint32_t i = 0; i < 4; i++) send(a, "worker_b", bytes((3 << 20) + i, i));
    CHECK(a.member.queued(a.slot_of("worker_b")) > (8 << 20));
    run_until({&a, &b}, [&] { return b.got["1"].size() == 4; });
    for (uint32_t i = 0; i < 4; i++) CHECK(b.got["1"][i] == bytes((3 << 20) + i, i));
    run_until({&a, &b}, [&] { return a.member.queued(a.slot_of("worker_b")) == 0; });
    CHECK(a.writables > 0);

    // A third member joins; then b leaves after sending: its messages come before its leave.
    Node c;
    CHECK(c.member.start(options(dir, "cache"), &err) == Member::kStarted);
    CHECK(c.member.initial_pending() == 2);
    run_until({&a, &b, &c}, [&] { return c.is_ready && a.slot_of("cache") && b.slot_of("cache"); });
    a.got.clear();
    send(b, "1", bytes(100, 42));
    b.member.close();
    run_until({&a, &c}, [&] { return a.downs.size() == 1 && c.downs.size() == 1; });
    CHECK(a.got["worker_b"].size() == 1 && a.got["worker_b"][0] == bytes(100, 42));
    struct stat st;
    CHECK(fstatat(AT_FDCWD, (dir + "/worker_b.sock").c_str(), &st, 0) != 0);
    CHECK(fstatat(AT_FDCWD, (dir + "/worker_b.lock").c_str(), &st, 0) != 0);

    // A stale socket file (its member died) is taken over; one found while listing is removed.
    for (const char* id : {"7", "9"}) {
      int s = socket(AF_UNIX, SOCK_SEQPACKET, 0);
      struct sockaddr_un sa = {};
      sa.sun_family = AF_UNIX;
      std::snprintf(sa.sun_path, sizeof sa.sun_path, "%s/%s.sock", dir.c_str(), id);
      CHECK(bind(s, reinterpret_cast<struct sockaddr*>(&sa), sizeof sa) == 0);
      close(s);
    }
    Node d;
    CHECK(d.member.start(options(dir, "7"), &err) == Member::kStarted);
    CHECK(fstatat(AT_FDCWD, (dir + "/9.sock").c_str(), &st, 0) != 0);
    run_until({&a, &c, &d}, [&] { return d.is_ready && a.slot_of("7") && c.slot_of("7"); });

    // A peer of another protocol version is refused, by name.
    {
      int s = raw_connect(dir, "1");
      Hello h;
      h.version = 99;
      h.id = "future";
      CHECK(hello_send(s, h, -1, -1, &err));
      run_until({&a}, [&] { return !a.errors.empty(); });
      CHECK(a.errors.back().find("future") != std::string::npos);
      CHECK(a.errors.back().find("v99") != std::string::npos);
      Hello r;
      int got_fds[2], n;
      struct pollfd p = {s, POLLIN, 0};
      CHECK(poll(&p, 1, 1000) == 1);
      CHECK(hello_recv(s, &r, got_fds, &n, &err) == kRecvMessage && r.kind == kRefuse && r.code == kRefuseVersion);
      close(s);
    }

    // Bytes that are not a handshake, with and without fds: refused, nothing leaks.
    std::mt19937 rng(5);
    for (int i = 0; i < 300; i++) {
      int s = raw_connect(dir, "cache");
      std::vector<uint8_t> junk(rng() % 400);
      for (auto& x : junk) x = static_cast<uint8_t>(rng());
      if (junk.size() >= 16 && i % 2 == 0) {
        std::memcpy(junk.data(), "SHMBUSHS", 8);
        uint32_t v = kProtocolVersion;
        std::memcpy(junk.data() + 8, &v, 4);
      }
      int pipefd[2];
      CHECK(pipe(pipefd) == 0);
      struct iovec iov = {junk.data(), junk.size()};
      struct msghdr msg = {};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      alignas(struct cmsghdr) char control[CMSG_SPACE(2 * sizeof(int))] = {};
      if (i % 3 == 0) {
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        struct cmsghdr* cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(2 * sizeof(int));
        std::memcpy(CMSG_DATA(cm), pipefd, sizeof pipefd);
      }
      sendmsg(s, &msg, MSG_NOSIGNAL);
      close(pipefd[0]);
      close(pipefd[1]);
      turn({&a, &c, &d}, 0);
      close(s);
    }
    for (int i = 0; i < 20; i++) turn({&a, &c, &d}, 0);
    CHECK(c.slot_of("1") && c.slot_of("7"));
    send(c, "1", bytes(64, 1));
    run_until({&a, &c, &d}, [&] { return a.got["cache"].size() == 1; });
  }
  // Everything closed: the fds are back where they were, and the last member out removed the
  // directory, which was empty.
  CHECK(count_fds() == fds_before);
  CHECK(access(dir.c_str(), F_OK) != 0 && errno == ENOENT);
  CHECK(mkdir(dir.c_str(), 0700) == 0);

  // A bus directory that others can enter, or a symlink, is refused.
  chmod(dir.c_str(), 0755);
  {
    Node x;
    CHECK(x.member.start(options(dir, "1"), &err) == Member::kFailed);
    CHECK(err.find("mode") != std::string::npos);
  }
  chmod(dir.c_str(), 0700);
  std::string link = dir + "-link";
  CHECK(symlink(dir.c_str(), link.c_str()) == 0);
  {
    Node x;
    CHECK(x.member.start(options(link, "1"), &err) == Member::kFailed);
    CHECK(err.find("symlink") != std::string::npos);
  }
  unlink(link.c_str());
  CHECK(count_fds() == fds_before);
  std::string cmd = "rm -rf " + dir;
  CHECK(system(cmd.c_str()) == 0);
}

void test_ids() {
  CHECK(id_valid("0") && id_valid("2147483647") && id_valid("primary") && id_valid("_a.b-c"));
  CHECK(!id_valid("2147483648") && !id_valid("01") && !id_valid("") && !id_valid("a/b") &&
        !id_valid("..") && !id_valid(".x") && !id_valid(std::string(65, 'a')));
  CHECK(id_compare("2", "10") < 0 && id_compare("10", "a") < 0 && id_compare("b", "a") > 0 &&
        id_compare("7", "7") == 0);
}

}  // namespace

int main() {
  test_ids();
  test_tie();
  test_join_at_once();
  test_silent_and_full_backlog();
  test_directory_life();
  test_bus();
  std::puts("member_test: ok");
  return 0;
}
