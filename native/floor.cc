#include "floor.h"

#include <poll.h>
#include <sched.h>
#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "member.h"
#include "poll_policy.h"

namespace shmbus {
namespace {

enum Kind : uint32_t {
  kPing = 1,      // echoed as kPong with the same body
  kPong = 2,
  kCpu = 3,       // answered with kCpu, body u64 cpu µs
  kCount = 4,     // arg = payload size: count and check what follows; answered with kCounting
  kCounting = 5,
  kData = 6,      // body: u32 sequence number, then the payload's other bytes
  kEnd = 7,       // body u64 messages sent; answered with kCounted
  kCounted = 8,   // body u64 received, u64 cpu µs, u64 first wrong message (or ~0), u64 its seq
  kQuit = 9,
};

constexpr size_t kHead = 8;
constexpr uint64_t kStallNs = 60'000'000'000;
constexpr uint64_t kLinkNs = 20'000'000'000;
// Empty passes (each busy-waits up to 5 µs) between looks at the member's sockets and timer
// (peer gone, handshake).
constexpr unsigned kPassesPerFdCheck = 64;

uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000 + uint64_t(ts.tv_nsec);
}

uint64_t cpu_us() {
  rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return uint64_t(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1'000'000 +
         uint64_t(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

uint32_t load32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
uint64_t load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// One member and the loop that drives it: a Reactor on poll(2), a MemberEvents that copies each
// message out once (small ones into one batch, large ones into buffers of their own, as the
// binding does) and hands them to handle() after the member has returned.
// Its passes are the binding's (PollPolicy), hot for the whole run: it never parks.
class FloorEnd : public Reactor, public MemberEvents, public PollLoop {
 public:
  explicit FloorEnd(const FloorOptions& o) : options_(o), policy_(member_, *this, ~uint64_t{0}), member_(*this, *this) {}
  ~FloorEnd() override { member_.close(); }

  bool start(std::string* err) {
    MemberOptions mo;
    mo.dir = options_.dir;
    mo.id = options_.id;
    mo.ring_capacity = options_.ring_capacity;
    mo.max_message = options_.max_message;
    mo.notify_bytes = options_.max_queue / 2;
    if (member_.start(mo, err) != Member::kStarted) return false;
    const uint64_t until = now_ns() + kLinkNs;
    while (!up_) {
      if (!check_fds(10)) return fail(err, "the link to member " + options_.peer_id + " went down");
      if (now_ns() > until) return fail(err, "member " + options_.peer_id + " did not link within 20 s");
    }
    policy_.sent(false);
    return true;
  }

  // Passes until done() holds; false and *err on a link gone or nothing for stall_ns. An empty
  // pass busy-waits and yields the CPU, as the binding's do: on a busy machine the message we
  // wait for may need this very CPU to be sent (spinning alone measured the scheduler, a p50
  // round trip of 21 ms with load 15 on 2 cores).
  template <typename Done>
  bool wait(Done done, const char* what, std::string* err, uint64_t stall_ns = kStallNs) {
    uint64_t quiet_from = 0;
    while (!done()) {
      bool moved = policy_.pass_begin();
      if (!rx_.empty()) deliver();
      policy_.pass_end();
      if (moved) {
        quiet_from = 0;
        continue;
      }
      const uint64_t now = now_ns();
      if (quiet_from == 0) quiet_from = now;
      if (++idle_passes_ >= kPassesPerFdCheck) {
        idle_passes_ = 0;
        if (!check_fds(0)) return fail(err, std::string("the link went down waiting for ") + what);
      }
      if (now - quiet_from >= stall_ns) return fail(err, std::string("nothing came for 60 s waiting for ") + what);
    }
    return !down_ || fail(err, std::string("the link went down waiting for ") + what);
  }

  Member::SendResult send(uint32_t kind, uint32_t arg, const uint8_t* body, size_t len) {
    uint8_t head[kHead];
    std::memcpy(head, &kind, 4);
    std::memcpy(head + 4, &arg, 4);
    Part parts[2] = {{head, kHead}, {body, len}};
    return member_.send(slot_, parts, 2, kHead + len);
  }

  // Sends once the peer's queue has room, as a bus sender does after drain(). As the bus does
  // (belowQueueLimit), the queue is read only when what was read last, plus what may have been
  // queued since, could reach the limit.
  bool send_flow(uint32_t kind, uint32_t arg, const uint8_t* body, size_t len, std::string* err) {
    const uint64_t size = kHead + len;
    if (seen_queued_ + handed_ + size > options_.max_queue) {
      seen_queued_ = member_.queued(slot_);
      handed_ = 0;
      if (seen_queued_ + size > options_.max_queue) {
        if (!wait([&] { return member_.queued(slot_) < options_.max_queue / 2; }, "the peer to take messages", err))
          return false;
        seen_queued_ = member_.queued(slot_);
      }
    }
    if (send(kind, arg, body, len) >= Member::kNoLink) return fail(err, "the link is gone");
    handed_ += 2 * size + 256;  // a record's header and padding, or a copy outside the ring
    return true;
  }

  // Called for each message, after the member has returned; set before start().
  std::function<void(uint32_t kind, uint32_t arg, const uint8_t* body, size_t len)> handle;

  static bool fail(std::string* err, const std::string& what) {
    if (err->empty()) *err = what;
    return false;
  }

  // ---- PollLoop ----
  uint64_t now_ns() override { return shmbus::now_ns(); }
  void start_passes() override {}
  void stop_passes() override {}
  void yield() override { sched_yield(); }

  // ---- Reactor ----
  void watch(int fd, void* tag) override { watches_.push_back({fd, tag}); }
  void unwatch(int, void* tag) override {
    watches_.erase(std::remove_if(watches_.begin(), watches_.end(), [&](const Watch& w) { return w.tag == tag; }),
                   watches_.end());
  }

  // ---- MemberEvents ----
  void link_up(uint32_t slot, const std::string& id) override {
    if (id != options_.peer_id) return;
    slot_ = slot;
    up_ = true;
  }
  void link_down(uint32_t slot, const std::string&) override {
    if (up_ && slot == slot_) down_ = true;
  }
  void ready() override {}
  void error(const std::string&, const std::string&) override {}
  void writable() override {}
  void message(uint32_t, const uint8_t* data, size_t len) override {
    rx_.push_back({batch_.size(), len, -1});
    batch_.insert(batch_.end(), data, data + len);
  }
  uint8_t* begin_large(uint32_t, size_t total) override {
    if (spare_.empty()) spare_.emplace_back();
    assembling_ = std::move(spare_.back());
    spare_.pop_back();
    assembling_.resize(total);
    return assembling_.data();
  }
  void end_large(uint32_t) override {
    rx_.push_back({0, assembling_.size(), static_cast<int>(own_.size())});
    own_.push_back(std::move(assembling_));
  }
  void drop_large(uint32_t) override {}

 private:
  struct Watch {
    int fd;
    void* tag;
  };
  struct Rx {
    size_t off, len;
    int own;  // index in own_, or -1: in batch_
  };

  void deliver() {
    for (const Rx& r : rx_) {
      const uint8_t* p = r.own < 0 ? batch_.data() + r.off : own_[r.own].data();
      if (r.len < kHead) continue;
      handle(load32(p), load32(p + 4), p + kHead, r.len - kHead);
    }
    rx_.clear();
    batch_.clear();
    for (auto& v : own_) spare_.push_back(std::move(v));
    own_.clear();
  }

  // Reports the watched fds that are readable to the member; false once the peer's link is gone.
  bool check_fds(int timeout_ms) {
    fds_.clear();
    for (const Watch& w : watches_) fds_.push_back({w.fd, POLLIN, 0});
    int n = ::poll(fds_.data(), fds_.size(), timeout_ms);
    if (n > 0) {
      std::vector<void*> ready;
      for (size_t i = 0; i < fds_.size(); i++)
        if (fds_[i].revents != 0) ready.push_back(watches_[i].tag);
      for (void* tag : ready) {
        bool still = std::any_of(watches_.begin(), watches_.end(), [&](const Watch& w) { return w.tag == tag; });
        if (still) member_.on_readable(tag);
      }
      if (!rx_.empty()) deliver();
    }
    return !down_;
  }

  FloorOptions options_;
  std::vector<Watch> watches_;
  std::vector<pollfd> fds_;
  std::vector<Rx> rx_;
  std::vector<uint8_t> batch_;
  std::vector<uint8_t> assembling_;
  std::vector<std::vector<uint8_t>> own_, spare_;
  uint32_t slot_ = 0;
  uint64_t seen_queued_ = 0;  // member_.queued() when last read
  uint64_t handed_ = 0;       // what the queue may have grown by since
  bool up_ = false;
  bool down_ = false;
  unsigned idle_passes_ = 0;
  PollPolicy policy_;  // holds only references to member_ and this
  Member member_;      // last: destroyed first, while what it calls back into still exists
};

uint64_t percentile(const std::vector<uint64_t>& sorted, double p) {
  size_t n = sorted.size();
  size_t i = static_cast<size_t>(p / 100.0 * double(n) + 0.999999);
  if (i < 1) i = 1;
  if (i > n) i = n;
  return sorted[i - 1];
}

}  // namespace

bool floor_drive(const FloorOptions& options, const FloorPlan& plan,
                 const std::function<void(const FloorResult&)>& on_result, std::string* err) {
  FloorEnd end(options);
  bool pong = false, pong_ok = true, counting = false, counted = false, cpu_in = false;
  uint64_t peer_cpu = 0, received = 0, bad_index = ~uint64_t{0}, bad_seq = 0;
  size_t size = 0;
  end.handle = [&](uint32_t kind, uint32_t, const uint8_t* body, size_t len) {
    switch (kind) {
      case kPong:
        pong = true;
        pong_ok = len == size && load32(body) == 0;
        break;
      case kCpu:
        if (len >= 8) peer_cpu = load64(body);
        cpu_in = true;
        break;
      case kCounting:
        counting = true;
        break;
      case kCounted:
        if (len >= 32) {
          received = load64(body);
          peer_cpu = load64(body + 8);
          bad_index = load64(body + 16);
          bad_seq = load64(body + 24);
        }
        counted = true;
        break;
    }
  };
  if (!end.start(err)) return false;
  auto peer_cpu_now = [&](uint64_t* out) {
    cpu_in = false;
    if (end.send(kCpu, 0, nullptr, 0) >= Member::kNoLink) return FloorEnd::fail(err, "the link is gone");
    if (!end.wait([&] { return cpu_in; }, "the peer's CPU time", err)) return false;
    *out = peer_cpu;
    return true;
  };
  std::vector<uint64_t> samples;
  std::vector<uint8_t> body;
  for (size_t payload : plan.payloads) {
    size = payload;
    body.assign(payload, 0x78);
    std::memset(body.data(), 0, 4);  // sequence number 0: the pings
    auto ping_pong = [&](uint64_t ns, std::vector<uint64_t>* out) {
      const uint64_t t0 = now_ns();
      for (uint64_t count = 0;; count++) {
        if (count >= 5 && now_ns() - t0 >= ns) return true;
        pong = false;
        const uint64_t t = now_ns();
        if (end.send(kPing, 0, body.data(), body.size()) >= Member::kNoLink) return FloorEnd::fail(err, "the link is gone");
        if (!end.wait([&] { return pong; }, "a pong", err)) return false;
        const uint64_t rtt = now_ns() - t;
        if (!pong_ok) return FloorEnd::fail(err, "a " + std::to_string(payload) + "-byte ping came back wrong");
        if (out != nullptr) out->push_back(rtt);
      }
    };
    if (!ping_pong(plan.warmup_ns, nullptr)) return false;

    FloorResult r;
    r.payload = payload;
    uint64_t peer0, peer1;
    if (!peer_cpu_now(&peer0)) return false;
    const uint64_t cpu0 = cpu_us();
    samples.clear();
    if (!ping_pong(plan.rtt_ns, &samples)) return false;
    const uint64_t cpu1 = cpu_us();
    if (!peer_cpu_now(&peer1)) return false;
    std::sort(samples.begin(), samples.end());
    r.count = samples.size();
    r.p50 = percentile(samples, 50);
    r.p99 = percentile(samples, 99);
    r.p999 = percentile(samples, 99.9);
    r.max = samples.back();
    r.rtt_cpu_ms = double(cpu1 - cpu0 + peer1 - peer0) / 1000;

    counting = counted = false;
    if (!end.send_flow(kCount, static_cast<uint32_t>(payload), nullptr, 0, err)) return false;
    if (!end.wait([&] { return counting; }, "the peer to count", err)) return false;
    const uint64_t t0 = now_ns();
    const uint64_t deadline = t0 + plan.tp_ns;
    uint64_t seq = 0;
    for (;;) {
      // Time is looked at every 8 messages, as the bench's own loop does.
      for (int i = 0; i < 8; i++, seq++) {
        const uint32_t s = static_cast<uint32_t>(seq);
        std::memcpy(body.data(), &s, 4);
        if (!end.send_flow(kData, 0, body.data(), body.size(), err)) return false;
      }
      if (now_ns() >= deadline) break;
    }
    if (!end.send_flow(kEnd, 0, reinterpret_cast<const uint8_t*>(&seq), 8, err)) return false;
    if (!end.wait([&] { return counted; }, "the peer's count", err)) return false;
    const uint64_t t1 = now_ns();
    const uint64_t cpu2 = cpu_us();
    if (bad_index != ~uint64_t{0}) {
      return FloorEnd::fail(err, "throughput check failed at the receiver: message " + std::to_string(bad_index) +
                                     (bad_seq == ~uint64_t{0} ? " has the wrong size" : " carries sequence number " + std::to_string(bad_seq)));
    }
    if (received != seq) {
      return FloorEnd::fail(err, "throughput check failed at the receiver: " + std::to_string(received) +
                                     " messages arrived, " + std::to_string(seq) + " were sent");
    }
    r.msgs = seq;
    r.seconds = double(t1 - t0) / 1e9;
    r.tp_cpu_ms = double(cpu2 - cpu1 + peer_cpu - peer1) / 1000;
    on_result(r);
  }
  end.send(kQuit, 0, nullptr, 0);
  return true;
}

bool floor_serve(const FloorOptions& options, std::string* err) {
  FloorEnd end(options);
  bool quit = false, counting = false;
  size_t size = 0;
  uint64_t expected = 0, bad_index = ~uint64_t{0}, bad_seq = 0;
  std::string send_err;
  end.handle = [&](uint32_t kind, uint32_t arg, const uint8_t* body, size_t len) {
    switch (kind) {
      case kPing:
        end.send(kPong, 0, body, len);
        break;
      case kCpu: {
        uint64_t c = cpu_us();
        end.send(kCpu, 0, reinterpret_cast<const uint8_t*>(&c), 8);
        break;
      }
      case kCount:
        size = arg;
        expected = 0;
        bad_index = ~uint64_t{0};
        counting = true;
        end.send(kCounting, 0, nullptr, 0);
        break;
      case kData:
        if (counting && bad_index == ~uint64_t{0}) {
          if (len != size) {
            bad_index = expected;
            bad_seq = ~uint64_t{0};
          } else if (load32(body) != static_cast<uint32_t>(expected)) {
            bad_index = expected;
            bad_seq = load32(body);
          }
        }
        expected++;
        break;
      case kEnd: {
        uint64_t out[4] = {expected, cpu_us(), bad_index, bad_seq};
        counting = false;
        end.send(kCounted, 0, reinterpret_cast<const uint8_t*>(out), sizeof out);
        break;
      }
      case kQuit:
        quit = true;
        break;
    }
  };
  if (!end.start(err)) return false;
  return end.wait([&] { return quit; }, "the driver", err, ~uint64_t{0}) || quit;
}

}  // namespace shmbus
