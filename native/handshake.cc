#include "handshake.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>

namespace shmbus {

namespace {

constexpr char kMagic[8] = {'S', 'H', 'M', 'B', 'U', 'S', 'H', 'S'};
constexpr size_t kTextLen = 160;

// Fixed little-endian wire layout; the first 16 bytes never change between versions.
struct Wire {
  char magic[8];
  uint32_t version;
  uint32_t kind;
  uint64_t ring_bytes;
  uint32_t code;
  uint32_t id_len;
  char id[kMaxIdLen];
  uint32_t text_len;
  char text[kTextLen];
};

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_name_start(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_'; }
bool is_name_char(char c) { return is_name_start(c) || is_digit(c) || c == '.' || c == '-'; }
bool is_number(const std::string& s) { return !s.empty() && is_digit(s[0]); }

}  // namespace

bool id_valid(const std::string& id) {
  if (id.empty() || id.size() > kMaxIdLen) return false;
  if (is_digit(id[0])) {
    if (id.size() > 10 || (id[0] == '0' && id.size() > 1)) return false;
    uint64_t v = 0;
    for (char c : id) {
      if (!is_digit(c)) return false;
      v = v * 10 + static_cast<uint64_t>(c - '0');
    }
    return v <= 0x7fffffffu;
  }
  if (!is_name_start(id[0])) return false;
  for (char c : id)
    if (!is_name_char(c)) return false;
  return true;
}

int id_compare(const std::string& a, const std::string& b) {
  bool na = is_number(a), nb = is_number(b);
  if (na != nb) return na ? -1 : 1;
  if (na && a.size() != b.size()) return a.size() < b.size() ? -1 : 1;
  int c = a.compare(b);
  return c < 0 ? -1 : c > 0 ? 1 : 0;
}

bool hello_send(int sock, const Hello& h, int fd1, int fd2, std::string* err) {
  Wire w;
  std::memset(&w, 0, sizeof w);
  std::memcpy(w.magic, kMagic, sizeof kMagic);
  w.version = h.version;
  w.kind = h.kind;
  w.ring_bytes = h.ring_bytes;
  w.code = h.code;
  w.id_len = static_cast<uint32_t>(h.id.size() < kMaxIdLen ? h.id.size() : kMaxIdLen);
  std::memcpy(w.id, h.id.data(), w.id_len);
  w.text_len = static_cast<uint32_t>(h.text.size() < kTextLen ? h.text.size() : kTextLen);
  std::memcpy(w.text, h.text.data(), w.text_len);

  struct iovec iov = {&w, sizeof w};
  struct msghdr msg;
  std::memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(struct cmsghdr) char control[CMSG_SPACE(2 * sizeof(int))];
  int nfds = (fd1 >= 0) + (fd2 >= 0);
  if (nfds > 0) {
    std::memset(control, 0, sizeof control);
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    int fds[2] = {fd1 >= 0 ? fd1 : fd2, fd2};
    std::memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
  }
  for (;;) {
    ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (n == static_cast<ssize_t>(sizeof w)) return true;
    if (n < 0 && errno == EINTR) continue;
    *err = std::string("sendmsg: ") + (n < 0 ? std::strerror(errno) : "short write");
    return false;
  }
}

RecvResult hello_recv(int sock, Hello* h, int fds[2], int* nfds, std::string* err) {
  *nfds = 0;
  err->clear();
  Wire w;
  std::memset(&w, 0, sizeof w);
  struct iovec iov = {&w, sizeof w};
  struct msghdr msg;
  std::memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(struct cmsghdr) char control[CMSG_SPACE(8 * sizeof(int))];
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return kRecvAgain;
    *err = std::string("recvmsg: ") + std::strerror(errno);
    return kRecvError;
  }
  // Take every fd that came, whatever else is wrong, so none leaks.
  int extra = 0;
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; i++) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      if (*nfds < 2) fds[(*nfds)++] = fd;
      else {
        close(fd);
        extra++;
      }
    }
  }
  if (n == 0) return kRecvEof;
  if (static_cast<size_t>(n) < 16 || std::memcmp(w.magic, kMagic, sizeof kMagic) != 0) {
    *err = "not a shmbus handshake";
    return kRecvMessage;
  }
  h->version = w.version;
  h->kind = w.kind;
  if (w.version != kProtocolVersion) {
    // Read the id if this version's layout has it where we expect it, to name the peer.
    if (static_cast<size_t>(n) >= offsetof(Wire, id) + kMaxIdLen && w.id_len <= kMaxIdLen)
      h->id.assign(w.id, w.id_len);
    *err = "protocol version mismatch";
    return kRecvMessage;
  }
  if (static_cast<size_t>(n) != sizeof w || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || extra) {
    *err = "malformed handshake";
    return kRecvMessage;
  }
  if (w.id_len > kMaxIdLen || w.text_len > kTextLen) {
    *err = "malformed handshake";
    return kRecvMessage;
  }
  h->ring_bytes = w.ring_bytes;
  h->code = w.code;
  h->id.assign(w.id, w.id_len);
  h->text.assign(w.text, w.text_len);
  if (!id_valid(h->id)) *err = "invalid member id in handshake";
  return kRecvMessage;
}

bool peer_uid_ok(int sock, std::string* err) {
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    *err = std::string("SO_PEERCRED: ") + std::strerror(errno);
    return false;
  }
  if (cred.uid != geteuid()) {
    *err = "peer runs as uid " + std::to_string(cred.uid) + ", not " + std::to_string(geteuid());
    return false;
  }
  return true;
}

}  // namespace shmbus
