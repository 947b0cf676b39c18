#include "member.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "bus_dir.h"
#include "doorbell.h"
#include "handshake.h"
#include "segment.h"

namespace shmbus {

namespace {

// Messages that did not fit in the ring, oldest first; `bytes` holds the message from `base` on.
struct PendingMessage {
  std::vector<uint8_t> bytes;
  size_t total = 0;
  size_t base = 0;
  size_t progress = 0;
};

// Read into one pass per link at most this much, so one busy peer can't starve the others.
constexpr size_t kDrainBudget = size_t{4} << 20;
// The other side may send a message slightly larger than our own limit (the bus's envelope
// comes on top of the body).
constexpr size_t kMessageSlack = size_t{64} << 10;

bool is_eventfd(int fd) {
  char path[64], target[64];
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(path, target, sizeof target - 1);
  if (n < 0) return false;
  target[n] = 0;
  return std::strcmp(target, "anon_inode:[eventfd]") == 0;
}

}  // namespace

struct PeerLink {
  enum State { kConnecting, kAccepting, kUp };
  State state = kAccepting;
  uint32_t slot = 0;
  int fd = -1;
  bool initial = false;  // begun by start(): open() waits for it
  std::string id;        // the peer's id (known at once when we connect)

  int out_fd = -1;  // the memfd of the ring we produce into, until the handshake sent it
  void* out_base = nullptr;
  size_t out_bytes = 0;
  RingProducer producer;

  void* in_base = nullptr;
  size_t in_bytes = 0;
  RingConsumer consumer;
  int peer_bell = -1;

  std::deque<PendingMessage> overflow;
  uint64_t overflow_bytes = 0;
  uint64_t last_queued = 0;
  bool notify = false;  // we asked the consumer to ring when it frees space
  bool broken = false;
};

class LinkSink : public FrameSink {
 public:
  LinkSink(MemberEvents& events, uint32_t slot) : events_(events), slot_(slot) {}
  void message(const uint8_t* data, size_t len) override { events_.message(slot_, data, len); }
  uint8_t* begin_large(size_t total) override { return events_.begin_large(slot_, total); }
  void end_large() override { events_.end_large(slot_); }

 private:
  MemberEvents& events_;
  uint32_t slot_;
};

Member::Member(Reactor& reactor, MemberEvents& events) : reactor_(reactor), events_(events) {}

Member::~Member() { close(); }

Member::StartResult Member::start(const MemberOptions& options, std::string* err) {
  options_ = options;
  if (!id_valid(options.id)) {
    *err = "invalid member id";
    return kFailed;
  }
  if (!ring_capacity_ok(options.ring_capacity)) {
    *err = "ring size must be a power of two from 4 KiB to 1 GiB";
    return kFailed;
  }
  dir_fd_ = busdir_open(options.dir.c_str(), err);
  if (dir_fd_ < 0) return kFailed;
  bool busy = false;
  // A survivor removing the socket of a dead member with this id holds its lock for a moment:
  // only a holder that listens, or one that keeps the lock, is a live member.
  for (int attempt = 0; attempt < 20; attempt++) {
    lock_fd_ = busdir_lock(dir_fd_, options.id, &busy, err);
    if (lock_fd_ >= 0 || !busy || busdir_listening(dir_fd_, options.id)) break;
    usleep(5000);
  }
  if (lock_fd_ < 0) {
    ::close(dir_fd_);
    dir_fd_ = -1;
    if (busy) *err = "member id " + options.id + " is held by a live member of this bus";
    return busy ? kDuplicate : kFailed;
  }
  bell_fd_ = doorbell_create();
  if (bell_fd_ < 0) {
    *err = std::string("eventfd: ") + std::strerror(errno);
    close();
    return kFailed;
  }
  listen_fd_ = busdir_listen(dir_fd_, options.id, err);
  if (listen_fd_ < 0) {
    close();
    return kFailed;
  }
  reactor_.watch(bell_fd_, &bell_tag_);
  reactor_.watch(listen_fd_, &listen_tag_);
  // Bound first, then listed: of two members joining at once, each sees the other.
  for (const std::string& id : busdir_list(dir_fd_)) {
    if (id != options.id && up_.count(id) == 0 && connecting_.count(id) == 0) connect_to(id, true);
  }
  return kStarted;
}

void Member::close() {
  if (listen_fd_ >= 0) {
    reactor_.unwatch(listen_fd_, &listen_tag_);
    busdir_unlink(dir_fd_, options_.id);
    ::close(listen_fd_);
    listen_fd_ = -1;
  }
  while (!links_.empty()) destroy(links_.begin()->second.get());
  up_.clear();
  connecting_.clear();
  initial_pending_ = 0;
  if (bell_fd_ >= 0) {
    reactor_.unwatch(bell_fd_, &bell_tag_);
    ::close(bell_fd_);
    bell_fd_ = -1;
  }
  if (lock_fd_ >= 0) {
    busdir_release(dir_fd_, options_.id, lock_fd_);
    lock_fd_ = -1;
  }
  if (dir_fd_ >= 0) {
    ::close(dir_fd_);
    dir_fd_ = -1;
  }
}

PeerLink* Member::new_link(int fd, bool outgoing, const std::string& id, std::string* err) {
  auto link = std::make_unique<PeerLink>();
  link->fd = fd;
  link->id = id;
  link->state = outgoing ? PeerLink::kConnecting : PeerLink::kAccepting;
  link->out_bytes = ring_mapping_bytes(options_.ring_capacity);
  link->out_fd = segment_create("shmbus-ring", link->out_bytes, err);
  if (link->out_fd < 0) return nullptr;
  link->out_base = segment_map(link->out_fd, link->out_bytes, err);
  if (link->out_base == nullptr) {
    ::close(link->out_fd);
    return nullptr;
  }
  ring_init(link->out_base, options_.ring_capacity);
  link->producer.attach(link->out_base, options_.ring_capacity);
  link->slot = next_slot_++;
  PeerLink* p = link.get();
  links_[p->slot] = std::move(link);
  reactor_.watch(fd, p);
  return p;
}

void Member::destroy(PeerLink* link) {
  reactor_.unwatch(link->fd, link);
  ::close(link->fd);
  if (link->out_fd >= 0) ::close(link->out_fd);
  if (link->peer_bell >= 0) ::close(link->peer_bell);
  segment_unmap(link->out_base, link->out_bytes);
  segment_unmap(link->in_base, link->in_bytes);
  links_.erase(link->slot);
}

void Member::connect_to(const std::string& id, bool initial) {
  int error_number = 0;
  int fd = busdir_connect(dir_fd_, id, &error_number);
  if (fd < 0) {
    // Refused: a socket file left by a member that died. Remove it unless its id is held.
    if (error_number == ECONNREFUSED) busdir_reap(dir_fd_, id);
    return;
  }
  std::string err;
  if (!peer_uid_ok(fd, &err)) {
    ::close(fd);
    events_.error(id, "member " + id + " not linked: " + err);
    return;
  }
  PeerLink* link = new_link(fd, true, id, &err);
  if (link == nullptr) {
    ::close(fd);
    events_.error(id, "member " + id + " not linked: " + err);
    return;
  }
  Hello h;
  h.kind = kHello;
  h.ring_bytes = options_.ring_capacity;
  h.id = options_.id;
  if (!hello_send(fd, h, link->out_fd, bell_fd_, &err)) {
    destroy(link);
    return;
  }
  connecting_[id] = link;
  if (initial) {
    link->initial = true;
    initial_pending_++;
  }
}

void Member::resolve_initial(PeerLink* link) {
  if (!link->initial) return;
  link->initial = false;
  if (initial_pending_ > 0 && --initial_pending_ == 0) events_.ready();
}

void Member::on_readable(void* tag) {
  if (tag == &listen_tag_) return on_listen();
  if (tag == &bell_tag_) return on_doorbell();
  on_link(static_cast<PeerLink*>(tag));
}

void Member::on_listen() {
  for (;;) {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;  // EAGAIN, or out of fds: try again on the next wake-up
    }
    std::string err;
    if (!peer_uid_ok(fd, &err)) {
      ::close(fd);
      events_.error("", "connection refused: " + err);
      continue;
    }
    if (new_link(fd, false, "", &err) == nullptr) {
      ::close(fd);
      events_.error("", "connection refused: " + err);
    }
  }
}

void Member::on_doorbell() {
  doorbell_clear(bell_fd_);
  poll();
}

void Member::on_link(PeerLink* link) {
  for (;;) {
    Hello h;
    int fds[2];
    int nfds = 0;
    std::string err;
    RecvResult r = hello_recv(link->fd, &h, fds, &nfds, &err);
    if (r == kRecvAgain) return;
    if (r != kRecvMessage) {
      for (int i = 0; i < nfds; i++) ::close(fds[i]);
      drop(link);
      return;
    }
    bool alive;
    if (link->state == PeerLink::kUp) {
      for (int i = 0; i < nfds; i++) ::close(fds[i]);  // nothing follows a handshake (yet)
      alive = true;
    } else if (link->state == PeerLink::kAccepting) {
      alive = on_hello(link, h, fds, nfds, err);
    } else {
      alive = on_welcome(link, h, fds, nfds, err);
    }
    if (!alive) return;
  }
}

void Member::refuse(PeerLink* link, uint32_t code, const std::string& text) {
  Hello h;
  h.kind = kRefuse;
  h.code = code;
  h.id = options_.id;
  h.text = text;
  std::string ignored;
  hello_send(link->fd, h, -1, -1, &ignored);
}

static std::string version_text(const std::string& id, uint32_t version) {
  return "member " + (id.empty() ? std::string("(unnamed)") : id) + " speaks shmbus protocol v" +
         std::to_string(version) + ", this member v" + std::to_string(kProtocolVersion) +
         ": run one shmbus version in every member of a bus";
}

bool Member::on_hello(PeerLink* link, const Hello& h, int* fds, int nfds, std::string err) {
  auto fail = [&](uint32_t code, const std::string& text, bool report) {
    for (int i = 0; i < nfds; i++) ::close(fds[i]);
    refuse(link, code, text);
    if (report) events_.error(h.id, text);
    drop(link);
    return false;
  };
  if (!err.empty()) {
    if (h.version != kProtocolVersion) return fail(kRefuseVersion, version_text(h.id, h.version), true);
    return fail(kRefuseBadHello, "bad handshake: " + err, true);
  }
  if (h.kind != kHello || h.id == options_.id) return fail(kRefuseBadHello, "bad handshake", true);
  auto c = connecting_.find(h.id);
  if (c != connecting_.end()) {
    // Both connected at once: the link begun by the lower id wins.
    if (id_compare(h.id, options_.id) > 0) return fail(kRefuseDuplicateLink, "", false);
    PeerLink* mine = c->second;
    connecting_.erase(c);
    link->initial = mine->initial;
    mine->initial = false;
    destroy(mine);
  }
  auto u = up_.find(h.id);
  if (u != up_.end()) drop(u->second);  // it restarted; the old link is dead
  if (nfds != 2) return fail(kRefuseBadHello, "handshake without ring and doorbell", true);
  std::string why;
  if (!attach_peer_ring(link, h.ring_bytes, fds[0], fds[1], &why)) {
    nfds = 0;
    return fail(kRefuseBadHello, "member " + h.id + " not linked: " + why, true);
  }
  link->id = h.id;
  Hello w;
  w.kind = kWelcome;
  w.ring_bytes = options_.ring_capacity;
  w.id = options_.id;
  if (!hello_send(link->fd, w, link->out_fd, bell_fd_, &why)) {
    drop(link);
    return false;
  }
  return bring_up(link);
}

bool Member::on_welcome(PeerLink* link, const Hello& h, int* fds, int nfds, std::string err) {
  auto fail = [&](const std::string& text) {
    for (int i = 0; i < nfds; i++) ::close(fds[i]);
    if (!text.empty()) events_.error(link->id, text);
    drop(link);
    return false;
  };
  if (!err.empty()) {
    if (h.version != kProtocolVersion) return fail(version_text(link->id, h.version));
    return fail("member " + link->id + " not linked: bad handshake: " + err);
  }
  if (h.kind == kRefuse) {
    if (h.code == kRefuseDuplicateLink) return fail("");  // its own link to us wins
    return fail("member " + link->id + " refused the link: " + h.text);
  }
  if (h.kind != kWelcome || h.id != link->id)
    return fail("member " + link->id + " not linked: it answered as " + h.id);
  if (nfds != 2) return fail("member " + link->id + " not linked: no ring in its answer");
  std::string why;
  if (!attach_peer_ring(link, h.ring_bytes, fds[0], fds[1], &why)) {
    nfds = 0;
    return fail("member " + link->id + " not linked: " + why);
  }
  connecting_.erase(link->id);
  auto u = up_.find(link->id);
  if (u != up_.end()) drop(u->second);
  return bring_up(link);
}

bool Member::attach_peer_ring(PeerLink* link, uint64_t ring_bytes, int ring_fd, int bell_fd,
                              std::string* err) {
  bool ok = false;
  size_t bytes = 0;
  void* base = nullptr;
  if (!ring_capacity_ok(ring_bytes)) {
    *err = "ring size out of range";
  } else if (bytes = ring_mapping_bytes(ring_bytes), !segment_check(ring_fd, bytes, err)) {
  } else if (!is_eventfd(bell_fd)) {
    *err = "doorbell is not an eventfd";
  } else if ((base = segment_map(ring_fd, bytes, err)) != nullptr) {
    ok = true;
  }
  ::close(ring_fd);
  if (!ok) {
    ::close(bell_fd);
    return false;
  }
  link->in_base = base;
  link->in_bytes = bytes;
  link->consumer.attach(base, ring_bytes, options_.max_message + kMessageSlack);
  link->peer_bell = bell_fd;
  return true;
}

bool Member::bring_up(PeerLink* link) {
  ::close(link->out_fd);
  link->out_fd = -1;
  link->state = PeerLink::kUp;
  up_[link->id] = link;
  events_.link_up(link->slot, link->id);
  if (drain_link(link) < 0) {
    events_.error(link->id, "ring from member " + link->id + " is corrupt (" +
                                link->consumer.error() + "); link closed");
    drop(link);
    return false;
  }
  resolve_initial(link);
  return true;
}

void Member::drop(PeerLink* link) {
  if (link->state == PeerLink::kUp) {
    // What it committed before it went is delivered first.
    if (!link->broken && drain_link(link) < 0)
      events_.error(link->id, "ring from member " + link->id + " is corrupt (" +
                                  link->consumer.error() + ")");
    up_.erase(link->id);
    if (link->consumer.assembling()) events_.drop_large(link->slot);
    events_.link_down(link->slot, link->id);
    busdir_reap(dir_fd_, link->id);
  } else if (link->state == PeerLink::kConnecting) {
    auto c = connecting_.find(link->id);
    if (c != connecting_.end() && c->second == link) connecting_.erase(c);
  }
  resolve_initial(link);
  destroy(link);
}

int Member::drain_link(PeerLink* link) {
  LinkSink sink(events_, link->slot);
  size_t got = 0;
  if (link->consumer.drain(sink, kDrainBudget, &got) != RingConsumer::kOk) {
    link->broken = true;
    return -1;
  }
  if (link->consumer.take_producer_waiting()) doorbell_ring(link->peer_bell);
  return static_cast<int>(got);
}

bool Member::flush_overflow(PeerLink* link) {
  for (int pass = 0; pass < 2; pass++) {
    bool wrote = false;
    while (!link->overflow.empty()) {
      PendingMessage& m = link->overflow.front();
      Part part = {m.bytes.data(), m.bytes.size()};
      size_t before = m.progress;
      RingProducer::Status st = link->producer.write(&part, 1, m.total, &m.progress, m.base);
      link->overflow_bytes -= m.progress - before;
      wrote |= m.progress != before;
      if (st == RingProducer::kCorrupt) {
        link->broken = true;
        return false;
      }
      if (st != RingProducer::kDone) break;
      recycle(std::move(m.bytes));
      link->overflow.pop_front();
    }
    if (wrote && link->producer.commit()) doorbell_ring(link->peer_bell);
    uint64_t q = link->producer.queued();
    if (q == ~uint64_t{0}) {
      link->broken = true;
      return false;
    }
    bool need = !link->overflow.empty() || q >= options_.notify_bytes;
    link->notify = need;
    if (!need || pass == 1) break;
    // Space freed just before the flag is set brings no wake-up: look once more after it.
    link->producer.want_space();
  }
  uint64_t q = link->producer.queued() + link->overflow_bytes;
  bool down = q < link->last_queued;
  link->last_queued = q;
  return down;
}

bool Member::poll() {
  bool moved = false, writable = false;
  std::vector<PeerLink*> broken;
  for (auto& entry : links_) {
    PeerLink* link = entry.second.get();
    if (link->state != PeerLink::kUp) continue;
    int got = drain_link(link);
    if (got < 0) {
      broken.push_back(link);
      continue;
    }
    if (got > 0) moved = true;
    if (link->notify || !link->overflow.empty() || link->broken) {
      if (flush_overflow(link)) writable = true;
      if (link->broken) broken.push_back(link);
    }
  }
  for (PeerLink* link : broken) {
    events_.error(link->id, "ring with member " + link->id + " is corrupt (" +
                                (link->consumer.error().empty() ? std::string("bad head index")
                                                                : link->consumer.error()) +
                                "); link closed");
    drop(link);
  }
  if (writable) events_.writable();
  return moved;
}

bool Member::park() {
  for (auto& entry : links_)
    if (entry.second->state == PeerLink::kUp) entry.second->consumer.set_waiting(true);
  for (auto& entry : links_) {
    if (entry.second->state == PeerLink::kUp && entry.second->consumer.has_data()) {
      unpark();
      return false;
    }
  }
  return true;
}

bool Member::has_data() const {
  for (auto& entry : links_)
    if (entry.second->state == PeerLink::kUp && entry.second->consumer.has_data()) return true;
  return false;
}

void Member::unpark() {
  for (auto& entry : links_)
    if (entry.second->state == PeerLink::kUp) entry.second->consumer.set_waiting(false);
}

Member::SendResult Member::send(uint32_t slot, const Part* parts, int nparts, size_t total) {
  auto it = links_.find(slot);
  if (it == links_.end() || it->second->state != PeerLink::kUp) return kNoLink;
  PeerLink* link = it->second.get();
  if (link->broken) return kBroken;
  size_t progress = 0;
  if (link->overflow.empty()) {
    RingProducer::Status st = link->producer.write(parts, nparts, total, &progress);
    if (st == RingProducer::kCorrupt) {
      link->broken = true;
      return kBroken;
    }
    if (progress > 0 || st == RingProducer::kDone) {
      if (link->producer.commit()) doorbell_ring(link->peer_bell);
    }
    if (st == RingProducer::kDone) {
      uint64_t q = link->producer.queued();
      if (q > link->last_queued) link->last_queued = q;
      if (q >= options_.notify_bytes && !link->notify) flush_overflow(link);
      return kSent;
    }
  }
  PendingMessage m;
  m.bytes = spare(total - progress);
  m.total = total;
  m.base = progress;
  m.progress = progress;
  m.bytes.reserve(total - progress);  // no zero-fill: one pass over the bytes, the copy
  size_t skip = progress;
  for (int i = 0; i < nparts; i++) {
    size_t off = skip < parts[i].len ? skip : parts[i].len;
    skip -= off;
    m.bytes.insert(m.bytes.end(), parts[i].data + off, parts[i].data + parts[i].len);
  }
  link->overflow_bytes += total - progress;
  link->overflow.push_back(std::move(m));
  uint64_t q = link->producer.queued() + link->overflow_bytes;
  if (q > link->last_queued) link->last_queued = q;
  flush_overflow(link);
  return kQueued;
}

uint64_t Member::queued(uint32_t slot) const {
  auto it = links_.find(slot);
  if (it == links_.end() || it->second->state != PeerLink::kUp) return 0;
  const PeerLink* link = it->second.get();
  uint64_t q = link->producer.queued();
  if (q == ~uint64_t{0}) q = link->out_bytes;
  return q + link->overflow_bytes;
}

// Overflow buffers are kept for reuse (up to kSpareBytes): fresh memory costs a page fault per
// page, which measured as much as the copy itself on a flood of 1 MiB messages.
constexpr size_t kSpareBytes = size_t{16} << 20;

std::vector<uint8_t> Member::spare(size_t bytes) {
  for (size_t i = 0; i < spares_.size(); i++) {
    if (spares_[i].capacity() >= bytes && spares_[i].capacity() <= 2 * bytes + 4096) {
      std::vector<uint8_t> v = std::move(spares_[i]);
      spares_[i] = std::move(spares_.back());
      spares_.pop_back();
      spare_bytes_ -= v.capacity();
      return v;
    }
  }
  return std::vector<uint8_t>();
}

void Member::recycle(std::vector<uint8_t>&& bytes) {
  if (bytes.capacity() < 4096 || spare_bytes_ + bytes.capacity() > kSpareBytes) return;
  bytes.clear();
  spare_bytes_ += bytes.capacity();
  spares_.push_back(std::move(bytes));
}

int Member::reap(const std::string& id) {
  if (dir_fd_ < 0 || !id_valid(id) || id == options_.id) return 0;
  return busdir_reap(dir_fd_, id);
}

}  // namespace shmbus
