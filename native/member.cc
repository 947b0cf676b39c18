#include "member.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
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

// A link that failed to form is begun again after 10 ms, doubling up to 1 s.
constexpr int64_t kRetryFirstMs = 10;
constexpr int64_t kRetryMaxMs = 1000;
// A ring that traffic has grown goes back to its start size once it has been quiet this long.
constexpr int64_t kRingTrimMs = 1000;

int64_t now_ms() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000 + ts.tv_nsec / 1000000;
}

// Whether the other end of a connected socket has closed it.
bool hung_up(int fd) {
  struct pollfd p = {fd, POLLRDHUP, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

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
  Fd fd;
  int64_t hello_deadline_ms = 0;  // accepting: closed if no HELLO came by then
  std::string id;                 // the peer's id (known at once when we connect)

  Fd out_fd;  // the memfd of the ring we produce into, until the handshake sent it
  void* out_base = nullptr;
  size_t out_bytes = 0;
  RingProducer producer;

  void* in_base = nullptr;
  size_t in_bytes = 0;
  RingConsumer consumer;
  Fd peer_bell;

  std::deque<PendingMessage> overflow;
  uint64_t overflow_bytes = 0;
  uint64_t last_queued = 0;
  size_t ring_limit = 0;        // what of our ring the producer used when we last looked
  uint64_t tail_at_trim = 0;    // our producer's index at the last trim_rings()
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
  // The last member out removes the bus directory when it is empty: one that joins meanwhile
  // finds it gone (its lock file can't be made) and makes it again.
  for (int round = 0;; round++) {
    StartResult r = take_id(err);
    if (r != kGone) {
      if (r != kStarted) return r;
      break;
    }
    if (round == 8) {
      *err = "the bus directory " + options.dir + " keeps being removed";
      return kFailed;
    }
    if (mkdir(options.dir.c_str(), 0700) != 0 && errno != EEXIST) {
      *err = "mkdir " + options.dir + ": " + std::strerror(errno);
      return kFailed;
    }
  }
  light_ = ring_light_barriers();
  bell_fd_.reset(doorbell_create());
  if (!bell_fd_.valid()) {
    *err = std::string("eventfd: ") + std::strerror(errno);
    close();
    return kFailed;
  }
  timer_fd_.reset(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  if (!timer_fd_.valid()) {
    *err = std::string("timerfd: ") + std::strerror(errno);
    close();
    return kFailed;
  }
  listen_fd_.reset(busdir_listen(dir_fd_.get(), options.id, err));
  if (!listen_fd_.valid()) {
    close();
    return kFailed;
  }
  reactor_.watch(bell_fd_.get(), &bell_tag_);
  reactor_.watch(timer_fd_.get(), &timer_tag_);
  reactor_.watch(listen_fd_.get(), &listen_tag_);
  // Bound first, then listed: of two members joining at once, at least one sees the other (and
  // when both do, the tie rule in on_hello keeps one link).
  for (const std::string& id : busdir_list(dir_fd_.get())) {
    if (id == options.id || linked_or_linking(id)) continue;
    initial_.insert(id);
    connect_to(id);
  }
  // Lock files of members that died before they bound, or whose socket a survivor removed
  // without its lock: nobody else will.
  for (const std::string& id : busdir_list(dir_fd_.get(), ".lock"))
    if (id != options.id && !linked_or_linking(id) && !busdir_listening(dir_fd_.get(), id)) busdir_reap(dir_fd_.get(), id);
  return kStarted;
}

// Opens the bus directory and takes this member's id there.
Member::StartResult Member::take_id(std::string* err) {
  dir_fd_.reset(busdir_open(options_.dir.c_str(), err));
  if (!dir_fd_.valid()) return errno == ENOENT ? kGone : kFailed;
  bool busy = false;
  // A survivor removing the socket of a dead member with this id holds its lock for a moment:
  // only a holder that listens, or one that keeps the lock, is a live member.
  for (int attempt = 0; attempt < 20; attempt++) {
    lock_fd_.reset(busdir_lock(dir_fd_.get(), options_.id, &busy, err));
    if (lock_fd_.valid() || !busy || busdir_listening(dir_fd_.get(), options_.id)) break;
    usleep(5000);
  }
  if (lock_fd_.valid()) return kStarted;
  struct stat st;
  bool gone = !busy && fstat(dir_fd_.get(), &st) == 0 && st.st_nlink == 0;
  dir_fd_.reset();
  if (busy) *err = "member id " + options_.id + " is held by a live member of this bus";
  return busy ? kDuplicate : gone ? kGone : kFailed;
}

void Member::rescan() {
  if (!listen_fd_.valid()) return;
  for (const std::string& id : busdir_list(dir_fd_.get()))
    if (id != options_.id && !linked_or_linking(id)) connect_to(id);
}

bool Member::linked_or_linking(const std::string& id) const {
  return up_.count(id) != 0 || connecting_.count(id) != 0;
}

void Member::close() {
  if (listen_fd_.valid()) {
    reactor_.unwatch(listen_fd_.get(), &listen_tag_);
    busdir_unlink(dir_fd_.get(), options_.id);
    listen_fd_.reset();
  }
  while (!links_.empty()) destroy(links_.begin()->second.get());
  up_.clear();
  connecting_.clear();
  initial_.clear();
  retries_.clear();
  if (timer_fd_.valid()) {
    reactor_.unwatch(timer_fd_.get(), &timer_tag_);
    timer_fd_.reset();
  }
  if (bell_fd_.valid()) {
    reactor_.unwatch(bell_fd_.get(), &bell_tag_);
    bell_fd_.reset();
  }
  bool joined = lock_fd_.valid();
  if (joined) busdir_release(dir_fd_.get(), options_.id, lock_fd_.release());
  dir_fd_.reset();
  // The last one out: no bus directory is left behind (rmdir refuses one that is not empty).
  if (joined) rmdir(options_.dir.c_str());
}

PeerLink* Member::new_link(int fd, bool outgoing, const std::string& id) {
  auto link = std::make_unique<PeerLink>();
  link->fd.reset(fd);
  link->id = id;
  link->state = outgoing ? PeerLink::kConnecting : PeerLink::kAccepting;
  link->slot = next_slot_++;
  PeerLink* p = link.get();
  links_[p->slot] = std::move(link);
  reactor_.watch(fd, p);
  return p;
}

// The ring we produce into; an accepted connection gets one only once its HELLO is good, so
// that a connection that never speaks costs an fd and nothing more.
bool Member::create_out_ring(PeerLink* link, std::string* err) {
  link->out_bytes = ring_mapping_bytes(options_.ring_capacity);
  link->out_fd.reset(segment_create("shmbus-ring", link->out_bytes, err));
  if (!link->out_fd.valid()) return false;
  link->out_base = segment_map(link->out_fd.get(), link->out_bytes, err);
  if (link->out_base == nullptr) {
    link->out_fd.reset();
    return false;
  }
  ring_init(link->out_base, options_.ring_capacity, light_ ? kRingFlagLight : 0);
  link->producer.attach(link->out_base, options_.ring_capacity);
  link->ring_limit = link->producer.limit();
  return true;
}

void Member::destroy(PeerLink* link) {
  reactor_.unwatch(link->fd.get(), link);  // before its fds close, with the link
  segment_unmap(link->out_base, link->out_bytes);
  segment_unmap(link->in_base, link->in_bytes);
  links_.erase(link->slot);
}

void Member::connect_to(const std::string& id) {
  int error_number = 0;
  int fd = busdir_connect(dir_fd_.get(), id, &error_number);
  if (fd < 0) {
    if (error_number == ECONNREFUSED) {
      // Nobody listens there: a socket file left by a member that died (removed unless its id
      // is held), or a member between bind and listen, which lists after it listens and so
      // links to us itself.
      busdir_reap(dir_fd_.get(), id);
      give_up(id);
    } else if (error_number == ENOENT || error_number == ENAMETOOLONG) {
      give_up(id);  // it left
    } else {
      retry_later(id);  // a full backlog (EAGAIN), out of fds: not the member's last word
    }
    return;
  }
  std::string err;
  if (!peer_uid_ok(fd, &err)) {
    ::close(fd);
    events_.error(id, "member " + id + " not linked: " + err);
    give_up(id);
    return;
  }
  PeerLink* link = new_link(fd, true, id);
  if (!create_out_ring(link, &err)) {
    destroy(link);
    events_.error(id, "member " + id + " not linked: " + err);
    give_up(id);
    return;
  }
  Hello h;
  h.kind = kHello;
  h.ring_bytes = options_.ring_capacity;
  h.id = options_.id;
  if (!hello_send(fd, h, link->out_fd.get(), bell_fd_.get(), &err)) {
    destroy(link);
    retry_later(id);
    return;
  }
  connecting_[id] = link;
}

void Member::retry_later(const std::string& id) {
  Retry& r = retries_[id];
  int64_t delay = std::min(kRetryMaxMs, kRetryFirstMs << std::min(r.attempts, 10));
  r.attempts++;
  r.due_ms = now_ms() + delay;
  arm_timer();
}

// The member is gone or can't be linked: open() waits for it no longer.
void Member::give_up(const std::string& id) {
  retries_.erase(id);
  if (initial_.erase(id) != 0 && initial_.empty()) events_.ready();
}

void Member::arm_timer() {
  if (timer_fd_.get() < 0) return;
  int64_t due = 0;
  for (auto& e : retries_)
    if (e.second.due_ms != 0 && (due == 0 || e.second.due_ms < due)) due = e.second.due_ms;
  for (auto& e : links_) {
    int64_t d = e.second->hello_deadline_ms;
    if (d != 0 && (due == 0 || d < due)) due = d;
  }
  if (trim_due_ms_ != 0 && (due == 0 || trim_due_ms_ < due)) due = trim_due_ms_;
  struct itimerspec its = {};
  if (due != 0) {
    int64_t wait = std::max<int64_t>(1, due - now_ms());
    its.it_value.tv_sec = wait / 1000;
    its.it_value.tv_nsec = (wait % 1000) * 1000000;
  }
  timerfd_settime(timer_fd_.get(), 0, &its, nullptr);
}

void Member::on_timer() {
  uint64_t expirations;
  ssize_t n = read(timer_fd_.get(), &expirations, sizeof expirations);
  (void)n;
  int64_t now = now_ms();
  std::vector<uint32_t> silent;
  for (auto& e : links_) {
    const PeerLink* link = e.second.get();
    if (link->state == PeerLink::kAccepting && link->hello_deadline_ms != 0 &&
        link->hello_deadline_ms <= now)
      silent.push_back(e.first);
  }
  for (uint32_t slot : silent) {
    // Its HELLO may have come in this very loop iteration: read before closing.
    auto it = links_.find(slot);
    if (it != links_.end()) on_link(it->second.get());
    it = links_.find(slot);
    if (it != links_.end() && it->second->state == PeerLink::kAccepting) drop(it->second.get());
  }
  std::vector<std::string> due;
  for (auto& e : retries_)
    if (e.second.due_ms != 0 && e.second.due_ms <= now) due.push_back(e.first);
  for (const std::string& id : due) {
    retries_[id].due_ms = 0;  // begun; connect_to() schedules it again if it fails
    if (!linked_or_linking(id)) connect_to(id);
  }
  if (trim_due_ms_ != 0 && trim_due_ms_ <= now) trim();
  arm_timer();
}

// A ring grew: make sure trim() looks at it once it goes quiet.
void Member::note_growth(PeerLink* link) {
  link->ring_limit = link->producer.limit();
  schedule_trim();
}

void Member::schedule_trim() {
  if (trim_due_ms_ != 0) return;
  trim_due_ms_ = now_ms() + kRingTrimMs;
  arm_timer();
}

// Rings that traffic grew and that nothing was written to since the last look go back to their
// start size, their other pages given back, and once every link is quiet so do the kept
// overflow buffers: memory follows traffic, not the member count.
void Member::trim() {
  bool grown = false, quiet = true;
  for (auto& e : links_) {
    PeerLink* link = e.second.get();
    if (link->state != PeerLink::kUp) continue;
    uint64_t tail = link->producer.tail();
    bool idle = tail == link->tail_at_trim && link->overflow.empty();
    quiet = quiet && idle;
    bool wake = false;
    if (idle && link->ring_limit > kRingStartBytes && link->producer.shrink(&wake))
      link->ring_limit = link->producer.limit();
    if (wake) doorbell_ring(link->peer_bell.get());
    link->tail_at_trim = link->producer.tail();
    if (link->ring_limit > kRingStartBytes) grown = true;
  }
  if (quiet) {
    spares_.clear();
    spare_bytes_ = 0;
  }
  trim_due_ms_ = 0;
  if (grown || !spares_.empty()) schedule_trim();
}

// Takes every connection waiting in the backlog and reads the HELLOs already there.
void Member::accept_waiting() {
  on_listen();
  std::vector<uint32_t> accepting;
  for (auto& e : links_)
    if (e.second->state == PeerLink::kAccepting) accepting.push_back(e.first);
  for (uint32_t slot : accepting) {
    auto it = links_.find(slot);
    if (it != links_.end()) on_link(it->second.get());
  }
}

void Member::on_readable(void* tag) {
  if (tag == &listen_tag_) return on_listen();
  if (tag == &bell_tag_) return on_doorbell();
  if (tag == &timer_tag_) return on_timer();
  on_link(static_cast<PeerLink*>(tag));
}

void Member::on_listen() {
  for (;;) {
    int fd = accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
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
    new_link(fd, false, "")->hello_deadline_ms = now_ms() + options_.hello_timeout_ms;
    arm_timer();
  }
}

void Member::on_doorbell() {
  doorbell_clear(bell_fd_.get());
  poll();
}

void Member::on_link(PeerLink* link) {
  for (;;) {
    Hello h;
    int fds[2];
    int nfds = 0;
    std::string err;
    RecvResult r = hello_recv(link->fd.get(), &h, fds, &nfds, &err);
    // Whatever came is closed at the end of this round, unless a link took it.
    Fd got[2];
    for (int i = 0; i < nfds; i++) got[i].reset(fds[i]);
    if (r == kRecvAgain) return;
    if (r != kRecvMessage) {
      drop(link);
      return;
    }
    bool alive;
    if (link->state == PeerLink::kUp) {
      alive = true;  // nothing follows a handshake (yet)
    } else if (link->state == PeerLink::kAccepting) {
      alive = on_hello(link, h, got, nfds, err);
    } else {
      alive = on_welcome(link, h, got, nfds, err);
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
  hello_send(link->fd.get(), h, -1, -1, &ignored);
}

static std::string version_text(const std::string& id, uint32_t version) {
  return "member " + (id.empty() ? std::string("(unnamed)") : id) + " speaks shmbus protocol v" +
         std::to_string(version) + ", this member v" + std::to_string(kProtocolVersion) +
         ": run one shmbus version in every member of a bus";
}

bool Member::on_hello(PeerLink* link, const Hello& h, Fd* fds, int nfds, std::string err) {
  auto fail = [&](uint32_t code, const std::string& text, bool report) {
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
  link->hello_deadline_ms = 0;
  auto c = connecting_.find(h.id);
  if (c != connecting_.end()) {
    // Both connected at once: the link begun by the lower id wins. The loser learns it from
    // the REFUSE, and then finds the winner's HELLO already in its backlog.
    if (id_compare(h.id, options_.id) > 0) return fail(kRefuseDuplicateLink, "", false);
    PeerLink* mine = c->second;
    connecting_.erase(c);
    destroy(mine);
  }
  auto u = up_.find(h.id);
  if (u != up_.end()) {
    // A member that restarted has closed its old link before it could take its id again. An
    // old link still open means this one is the loser of a tie that the peer has already
    // settled (it closed this connection when it took ours): keep the link that is up.
    if (!hung_up(u->second->fd.get())) return fail(kRefuseDuplicateLink, "", false);
    drop(u->second);
  }
  if (nfds != 2) return fail(kRefuseBadHello, "handshake without ring and doorbell", true);
  std::string why;
  if (!attach_peer_ring(link, h.ring_bytes, std::move(fds[0]), std::move(fds[1]), &why)) {
    return fail(kRefuseBadHello, "member " + h.id + " not linked: " + why, true);
  }
  if (!create_out_ring(link, &why)) {
    return fail(kRefuseBadHello, "member " + h.id + " not linked: " + why, true);
  }
  link->id = h.id;
  Hello w;
  w.kind = kWelcome;
  w.ring_bytes = options_.ring_capacity;
  w.id = options_.id;
  if (!hello_send(link->fd.get(), w, link->out_fd.get(), bell_fd_.get(), &why)) {
    drop(link);
    return false;
  }
  return bring_up(link);
}

bool Member::on_welcome(PeerLink* link, const Hello& h, Fd* fds, int nfds, std::string err) {
  auto fail = [&](const std::string& text) {
    if (!text.empty()) events_.error(link->id, text);
    drop(link);
    return false;
  };
  if (!err.empty()) {
    std::string id = link->id;
    fail(h.version != kProtocolVersion ? version_text(id, h.version)
                                       : "member " + id + " not linked: bad handshake: " + err);
    give_up(id);
    return false;
  }
  if (h.kind == kRefuse) {
    if (h.code == kRefuseDuplicateLink) {
      // Its own link to us wins: its HELLO is in our backlog. Should it not be (a restarted
      // member whose old link the peer has not seen close yet), connect again shortly.
      fail("");  // schedules the retry
      accept_waiting();
      return false;
    }
    std::string id = link->id;
    fail("member " + id + " refused the link: " + h.text);
    give_up(id);
    return false;
  }
  std::string id = link->id;
  std::string why;
  if (h.kind != kWelcome || h.id != id) {
    why = "it answered as " + h.id;
  } else if (nfds != 2) {
    why = "no ring in its answer";
  } else {
    attach_peer_ring(link, h.ring_bytes, std::move(fds[0]), std::move(fds[1]), &why);
  }
  if (!why.empty()) {
    fail("member " + id + " not linked: " + why);
    give_up(id);
    return false;
  }
  connecting_.erase(link->id);
  auto u = up_.find(link->id);
  if (u != up_.end()) drop(u->second);
  return bring_up(link);
}

bool Member::attach_peer_ring(PeerLink* link, uint64_t ring_bytes, Fd ring, Fd bell,
                              std::string* err) {
  const int ring_fd = ring.get(), bell_fd = bell.get();
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
  if (!ok) return false;
  link->in_base = base;
  link->in_bytes = bytes;
  link->consumer.attach(base, ring_bytes, options_.max_message + kMessageSlack);
  link->peer_bell = std::move(bell);
  return true;
}

bool Member::bring_up(PeerLink* link) {
  // Light mode on both rings of the pair when both members can use it (see ring.h); both
  // rings are attached by now.
  const bool light = light_ && (ring_flags(link->in_base) & kRingFlagLight) != 0;
  link->consumer.set_light(light);
  link->producer.set_light(light);
  link->out_fd.reset();
  link->state = PeerLink::kUp;
  up_[link->id] = link;
  retries_.erase(link->id);
  events_.link_up(link->slot, link->id);
  std::string id = link->id;
  bool ok = drain_link(link) >= 0;
  if (!ok) {
    events_.error(id, "ring from member " + id + " is corrupt (" + link->consumer.error() +
                          "); link closed");
    drop(link);
  }
  give_up(id);  // linked: open() waits for it no longer
  return ok;
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
    busdir_reap(dir_fd_.get(), link->id);
    destroy(link);
    return;
  }
  if (link->state == PeerLink::kConnecting) {
    // Cut short before it answered: it died (the retry finds its socket gone or refusing), or
    // it dropped a connection it could not take yet.
    auto c = connecting_.find(link->id);
    bool current = c != connecting_.end() && c->second == link;
    if (current) connecting_.erase(c);
    std::string id = link->id;
    destroy(link);
    if (current) retry_later(id);
    return;
  }
  destroy(link);
}

int Member::drain_link(PeerLink* link) {
  LinkSink sink(events_, link->slot);
  size_t got = 0;
  if (link->consumer.drain(sink, kDrainBudget, &got) != RingConsumer::kOk) {
    link->broken = true;
    return -1;
  }
  if (link->consumer.take_producer_waiting()) doorbell_ring(link->peer_bell.get());
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
    if (wrote && link->producer.commit()) doorbell_ring(link->peer_bell.get());
    if (link->producer.limit() != link->ring_limit) note_growth(link);
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
  bool light = false;
  for (auto& entry : links_) {
    if (entry.second->state != PeerLink::kUp) continue;
    entry.second->consumer.set_waiting(true);
    light |= entry.second->consumer.light();
  }
  // Our producers publish without a fence on light rings: this barrier orders their stores.
  if (light) ring_heavy_barrier();
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
      if (link->producer.commit()) doorbell_ring(link->peer_bell.get());
    }
    if (link->producer.limit() != link->ring_limit) note_growth(link);
    if (st == RingProducer::kDone) {
      // The consumer's index is read only when what we last saw of it leaves the ring near the
      // threshold: reading it on every send took the consumer's cache line away per message.
      uint64_t q = link->producer.queued_at_most();
      if (q >= options_.notify_bytes && !link->notify) {
        q = link->producer.queued();
        if (q >= options_.notify_bytes) flush_overflow(link);
      }
      if (q > link->last_queued && q != ~uint64_t{0}) link->last_queued = q;
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

bool Member::light(uint32_t slot) const {
  auto it = links_.find(slot);
  return it != links_.end() && it->second->state == PeerLink::kUp && it->second->consumer.light() &&
         it->second->producer.light();
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
  schedule_trim();
}

int Member::reap(const std::string& id) {
  if (dir_fd_.get() < 0 || !id_valid(id) || id == options_.id) return 0;
  return busdir_reap(dir_fd_.get(), id);
}

}  // namespace shmbus
