#include "poll_policy.h"

namespace shmbus {

PollPolicy::PollPolicy(Pollable& target, PollLoop& loop, uint64_t spin_ns)
    : target_(target), loop_(loop), spin_ns_(spin_ns), busy_wait_ns_(spin_ns < kBusyWaitNs ? spin_ns : kBusyWaitNs) {}

void PollPolicy::start() { park_fully(); }

void PollPolicy::sent(bool broken) {
  if (!broken) return go_hot();
  // A broken link is closed (and reported) by the next pass, which must come soon even when
  // never spinning: one pass, then back to the usual rhythm.
  if (stopped_ || hot_) return;
  hot_ = true;
  last_ns_ = loop_.now_ns();
  target_.unpark();
  loop_.start_passes();
}

void PollPolicy::woken(bool doorbell) {
  if (stopped_) return;
  if (doorbell) go_hot();
  // Whatever woke us, a parked member goes back to sleep with every ring's flag set: a link
  // that came up, or a producer that rang and cleared its flag, must not leave one unset.
  park_fully();
}

bool PollPolicy::pass_begin() {
  if (stopped_) return false;
  bool moved = target_.poll();
  uint64_t now = loop_.now_ns();
  if (!moved && hot_ && busy_wait_ns_ > 0) {
    const uint64_t until = now + busy_wait_ns_;
    do {
      if (target_.has_data()) {
        moved = target_.poll();
        break;
      }
      now = loop_.now_ns();
    } while (now < until);
  }
  if (moved || active_) last_ns_ = now;
  active_ = false;
  pass_now_ns_ = now;
  pass_moved_ = moved;
  return moved;
}

void PollPolicy::pass_end() {
  if (stopped_ || !hot_ || pass_moved_) return;
  loop_.yield();
  if (pass_now_ns_ - last_ns_ < spin_ns_) return;
  if (target_.park()) {
    hot_ = false;
    loop_.stop_passes();
  } else {
    last_ns_ = pass_now_ns_;
  }
}

void PollPolicy::stop() {
  if (stopped_) return;
  stopped_ = true;
  if (hot_) loop_.stop_passes();
  hot_ = false;
}

void PollPolicy::go_hot() {
  if (spin_ns_ == 0 || stopped_) return;
  if (hot_) {
    active_ = true;  // pass_begin() takes the time: no clock read per send
    return;
  }
  last_ns_ = loop_.now_ns();
  hot_ = true;
  target_.unpark();
  loop_.start_passes();
}

// Sleep on the doorbell; what came while we were getting ready is read first.
void PollPolicy::park_fully() {
  if (hot_ || stopped_) return;
  while (!target_.park()) target_.poll();
}

}  // namespace shmbus
