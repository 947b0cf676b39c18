// A member of a bus: its socket in the bus directory, its doorbell, and a PeerLink to every
// other member (two rings, one each way, and the Unix socket that carries the handshake and
// tells when the peer is gone). No event loop in here: a Reactor watches fds for it and calls
// on_readable(); a MemberEvents receives frames and changes. Single-threaded.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "fd.h"
#include "poll_policy.h"
#include "ring.h"

namespace shmbus {

class Reactor {
 public:
  virtual ~Reactor() = default;
  // Report readability / hang-up of fd by calling Member::on_readable(tag).
  virtual void watch(int fd, void* tag) = 0;
  // Stop reporting; called before fd is closed.
  virtual void unwatch(int fd, void* tag) = 0;
};

class MemberEvents {
 public:
  virtual ~MemberEvents() = default;
  virtual void link_up(uint32_t slot, const std::string& id) = 0;
  // After the last frame from it.
  virtual void link_down(uint32_t slot, const std::string& id) = 0;
  // Every link begun by start() is up or gone.
  virtual void ready() = 0;
  virtual void error(const std::string& id, const std::string& message) = 0;
  // Bytes queued for some peer went down.
  virtual void writable() = 0;
  virtual void message(uint32_t slot, const uint8_t* data, size_t len) = 0;
  virtual uint8_t* begin_large(uint32_t slot, size_t total) = 0;
  virtual void end_large(uint32_t slot) = 0;
  // The link went down in the middle of a large message: forget it.
  virtual void drop_large(uint32_t slot) = 0;
};

struct MemberOptions {
  std::string dir;
  std::string id;
  size_t ring_capacity = size_t{1} << 20;
  size_t max_message = size_t{64} << 20;
  // Ask the consumer for a wake-up once this many bytes are queued for it (the bus's drain()
  // threshold), as well as whenever messages wait outside the ring.
  uint64_t notify_bytes = uint64_t{32} << 20;
  // A connection that has not sent its HELLO by then is closed: a process that connects and
  // never speaks must not hold a slot.
  int hello_timeout_ms = 5000;
};

struct PeerLink;

class Member : public Pollable {
 public:
  Member(Reactor& reactor, MemberEvents& events);
  ~Member() override;
  Member(const Member&) = delete;
  Member& operator=(const Member&) = delete;

  enum StartResult { kStarted, kDuplicate, kFailed, kGone /* internal: the directory went */ };
  // Joins the bus: takes the id, binds, lists the directory and begins a link to every member.
  // Makes no event callback itself.
  StartResult start(const MemberOptions& options, std::string* err);
  // Members found by start() not yet linked or gone; ready() fires when this reaches 0.
  size_t initial_pending() const { return initial_.size(); }
  // Lists the directory again and begins a link to every member listed that has none (start()
  // does this once; tests use it to have two members connect to each other at once).
  void rescan();
  // Leaves the bus and frees everything. Makes no event callback. Idempotent.
  void close();
  bool open() const { return lock_fd_.valid(); }

  void on_readable(void* tag);
  // Reads every ring and moves waiting messages on. true if anything moved.
  bool poll() override;
  // Before sleeping on the doorbell: tells producers to ring it. false if data came meanwhile
  // (then keep polling).
  bool park() override;
  // Busy again: producers need not ring.
  void unpark() override;
  // Whether some ring has a record to read: a few loads, no side effects (for busy-waiting).
  bool has_data() const override;

  enum SendResult { kSent, kQueued, kNoLink, kBroken };
  SendResult send(uint32_t slot, const Part* parts, int nparts, size_t total);
  // Bytes accepted for the peer and not yet taken by it.
  uint64_t queued(uint32_t slot) const;
  // Whether the link's rings use light mode (see ring.h).
  bool light(uint32_t slot) const;
  // Removes a dead member's socket file if no live member holds its id (1 removed, 0 nothing
  // there, -1 held).
  int reap(const std::string& id);
  int doorbell_fd() const { return bell_fd_.get(); }

 private:
  StartResult take_id(std::string* err);
  PeerLink* new_link(int fd, bool outgoing, const std::string& id);
  bool create_out_ring(PeerLink* link, std::string* err);
  void connect_to(const std::string& id);
  void retry_later(const std::string& id);
  void give_up(const std::string& id);
  bool linked_or_linking(const std::string& id) const;
  void on_listen();
  void on_doorbell();
  void on_timer();
  void arm_timer();
  void accept_waiting();
  void note_growth(PeerLink* link);
  void schedule_trim();
  void trim();
  void on_link(PeerLink* link);
  bool on_hello(PeerLink* link, const struct Hello& h, Fd* fds, int nfds, std::string err);
  bool on_welcome(PeerLink* link, const struct Hello& h, Fd* fds, int nfds, std::string err);
  bool attach_peer_ring(PeerLink* link, uint64_t ring_bytes, Fd ring, Fd bell,
                        std::string* err);
  bool bring_up(PeerLink* link);  // false if the link went down at once
  void refuse(PeerLink* link, uint32_t code, const std::string& text);
  void drop(PeerLink* link);  // closes a link; reports link_down if it was up
  int drain_link(PeerLink* link);  // records read, or -1 if the ring is corrupt
  bool flush_overflow(PeerLink* link);
  void destroy(PeerLink* link);
  std::vector<uint8_t> spare(size_t bytes);
  void recycle(std::vector<uint8_t>&& bytes);

  Reactor& reactor_;
  MemberEvents& events_;
  MemberOptions options_;
  Fd dir_fd_;
  Fd lock_fd_;
  Fd listen_fd_;
  Fd bell_fd_;
  Fd timer_fd_;
  char listen_tag_ = 0;
  char bell_tag_ = 0;
  char timer_tag_ = 0;
  uint32_t next_slot_ = 1;
  std::set<std::string> initial_;  // ids found by start() and not yet linked or given up
  struct Retry {
    int64_t due_ms = 0;
    int attempts = 0;
  };
  // Links that failed to form (a full backlog, a handshake cut short, a tie whose winner has not
  // connected yet), begun again at due_ms.
  std::map<std::string, Retry> retries_;
  int64_t trim_due_ms_ = 0;  // when to look for grown rings gone quiet (0: none grown)
  std::map<uint32_t, std::unique_ptr<PeerLink>> links_;  // every link, by slot
  std::map<std::string, PeerLink*> up_;                  // links that are up, by peer id
  std::map<std::string, PeerLink*> connecting_;          // our HELLO sent, no answer yet
  std::vector<std::vector<uint8_t>> spares_;             // emptied overflow buffers
  size_t spare_bytes_ = 0;
  bool light_ = false;  // this process can use the rings' light mode (ring_light_barriers())
};

}  // namespace shmbus
