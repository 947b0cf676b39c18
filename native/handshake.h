// The peer-link handshake over a Unix SOCK_SEQPACKET socket. The member that connects sends
// HELLO with its id, the memfd of the ring it will produce into and its doorbell (SCM_RIGHTS);
// the member it reached answers WELCOME with the same, or REFUSE with a reason. Every message
// starts with a magic and the protocol version, so members of different shmbus versions refuse
// each other by name instead of misreading each other's rings.
#pragma once

#include <cstdint>
#include <string>

namespace shmbus {

constexpr uint32_t kProtocolVersion = 1;
constexpr size_t kMaxIdLen = 64;

enum HelloKind : uint32_t { kHello = 1, kWelcome = 2, kRefuse = 3 };
enum RefuseCode : uint32_t {
  kRefuseVersion = 1,        // speaks another protocol version
  kRefuseDuplicateLink = 2,  // the pair already has a link (the other one wins the tie)
  kRefuseBadHello = 3,       // malformed handshake or unusable ring
  kRefuseUid = 4,            // another user
};

struct Hello {
  uint32_t version = kProtocolVersion;
  uint32_t kind = kHello;
  uint64_t ring_bytes = 0;  // capacity of the ring whose memfd comes with this message
  uint32_t code = 0;        // for kRefuse
  std::string id;           // the sender's member id
  std::string text;         // for kRefuse: why
};

// An id as the bus spells it: "123" (0..2^31-1, no leading zeros) or a name matching
// /^[A-Za-z_][A-Za-z0-9_.-]{0,63}$/.
bool id_valid(const std::string& id);
// Total order on ids: numbers ascending, then names bytewise.
int id_compare(const std::string& a, const std::string& b);

// Sends one handshake message with up to two fds. false and *err on failure.
bool hello_send(int sock, const Hello& h, int fd1, int fd2, std::string* err);

enum RecvResult { kRecvMessage, kRecvEof, kRecvAgain, kRecvError };
// Receives one handshake message. On kRecvMessage, fds[0..*nfds) are the fds that came with it
// (the caller owns them, always, even when it rejects the message); *err is non-empty if the
// message is malformed (then h->version/h->id are filled as far as they could be read).
RecvResult hello_recv(int sock, Hello* h, int fds[2], int* nfds, std::string* err);

// true if the socket's peer runs as this process's effective uid.
bool peer_uid_ok(int sock, std::string* err);

}  // namespace shmbus
