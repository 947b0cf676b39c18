// When a member polls its rings and when it sleeps on its doorbell. Node-free: the binding runs
// it on the libuv loop (a pass on every loop iteration while hot), the floor in a plain loop.
//
//   parked  asleep on the doorbell: every ring's consumer flag is set, producers ring it.
//   hot     traffic is recent: a pass on every loop iteration reads every ring. A pass that finds
//           nothing first watches the rings for up to busy_wait_ns (a loop iteration costs more
//           than that, so a reply is seen as it lands), then yields the CPU (on 2 busy cores the
//           peer we wait for may be waiting for this very CPU: measured p50 round trip 38-75 µs
//           with the yield, 132-148 µs without). After spin_ns with nothing moved nor sent, the
//           member parks.
//
// A send makes the member hot (a reply is likely to follow); with spin_ns 0 it never is, but a
// send that finds the link broken still gets one pass soon (a "kick"), which closes and reports
// the link. A doorbell wake-up makes it hot too; any other wake-up leaves a parked member parked,
// with every ring's flag set again.
#pragma once

#include <cstdint>

namespace shmbus {

// What the policy polls: a Member.
class Pollable {
 public:
  virtual ~Pollable() = default;
  // Reads every ring; true if anything moved.
  virtual bool poll() = 0;
  // Whether some ring has a record to read (a few loads, no side effects).
  virtual bool has_data() const = 0;
  // Sets every ring's consumer flag; false (flags cleared again) if data came meanwhile.
  virtual bool park() = 0;
  // Clears the flags: producers need not ring.
  virtual void unpark() = 0;
};

// What the policy needs from the loop that runs it.
class PollLoop {
 public:
  virtual ~PollLoop() = default;
  virtual uint64_t now_ns() = 0;
  // Call pass_begin()/pass_end() on every loop iteration from now on, until stop_passes().
  virtual void start_passes() = 0;
  virtual void stop_passes() = 0;
  virtual void yield() = 0;
};

class PollPolicy {
 public:
  // How long a polling pass watches the rings before going round the loop again, at most.
  // Measured on 2 cores, 64 B ping-pong p50: 10-12 µs without it, 7.3-7.4 µs with 5 µs, no
  // better with 20 µs (and throughput fell).
  static constexpr uint64_t kBusyWaitNs = 5000;

  // spin_ns: how long after the last traffic a hot member keeps polling (0: never hot).
  PollPolicy(Pollable& target, PollLoop& loop, uint64_t spin_ns);

  // After the member started: park, reading first what came while getting ready.
  void start();
  // After a send; broken: the send found the link broken.
  void sent(bool broken);
  // After the member handled a readable fd; doorbell: it was the member's doorbell.
  void woken(bool doorbell);
  // A polling pass, in two halves around handing what it read on: pass_begin() reads the rings
  // (true if anything moved); pass_end() yields and parks when the time has come. Between the
  // two, sent() may be called (an answer), and stop().
  bool pass_begin();
  void pass_end();
  // No more passes nor parking; idempotent.
  void stop();

  bool hot() const { return hot_; }

 private:
  void go_hot();
  void park_fully();

  Pollable& target_;
  PollLoop& loop_;
  const uint64_t spin_ns_;
  const uint64_t busy_wait_ns_;  // kBusyWaitNs, or the polling window if shorter
  uint64_t last_ns_ = 0;         // the last traffic seen by a pass (or the start of hot)
  uint64_t pass_now_ns_ = 0;     // the clock when the current pass read the rings
  bool pass_moved_ = false;
  bool hot_ = false;
  bool active_ = false;  // sent something since the last pass (no clock read per send)
  bool stopped_ = false;
};

}  // namespace shmbus
