// The polling policy on a scripted target and a fake clock: when it goes hot, how long it stays
// hot, when it yields, busy-waits and parks, what a broken send and a wake-up do.
#include <cstdint>
#include <cstdio>
#include <deque>

#include "../poll_policy.h"
#include "test.h"

using namespace shmbus;

namespace {

// A ring set whose reads are scripted: each poll() takes the next answer (false once none).
class FakeTarget : public Pollable {
 public:
  std::deque<bool> polls;      // what the next poll() calls find
  std::deque<bool> parks;      // what the next park() calls return (true once none)
  int data_after_reads = -1;   // has_data() turns true after this many calls (-1: never)
  int poll_calls = 0, park_calls = 0, unpark_calls = 0;
  mutable int has_data_calls = 0;
  bool parked = false;

  bool poll() override {
    poll_calls++;
    if (polls.empty()) return false;
    bool v = polls.front();
    polls.pop_front();
    return v;
  }
  bool has_data() const override {
    has_data_calls++;
    return data_after_reads >= 0 && has_data_calls > data_after_reads;
  }
  bool park() override {
    park_calls++;
    bool v = parks.empty() ? true : parks.front();
    if (!parks.empty()) parks.pop_front();
    parked = v;
    return v;
  }
  void unpark() override {
    unpark_calls++;
    parked = false;
  }
};

// A clock that moves by `step` ns at each read.
class FakeLoop : public PollLoop {
 public:
  uint64_t now = 1000;
  uint64_t step = 0;
  int clock_reads = 0, yields = 0, starts = 0, stops = 0;
  bool passing = false;

  uint64_t now_ns() override {
    clock_reads++;
    now += step;
    return now;
  }
  void start_passes() override {
    starts++;
    passing = true;
  }
  void stop_passes() override {
    stops++;
    passing = false;
  }
  void yield() override { yields++; }
};

// One loop iteration's pass, as the binding runs it.
bool pass(PollPolicy& p) {
  bool moved = p.pass_begin();
  p.pass_end();
  return moved;
}

void test_start_parks_after_reading_what_came() {
  FakeTarget t;
  FakeLoop l;
  PollPolicy p(t, l, 50'000);
  t.parks = {false, false, true};  // data came twice while getting ready
  p.start();
  CHECK(t.park_calls == 3);
  CHECK(t.poll_calls == 2);
  CHECK(t.parked && !p.hot() && !l.passing);
}

void test_send_goes_hot_then_parks_after_the_window() {
  FakeTarget t;
  FakeLoop l;
  PollPolicy p(t, l, 50'000);
  p.start();
  p.sent(false);
  CHECK(p.hot() && l.passing && l.starts == 1 && t.unpark_calls == 1 && !t.parked);
  // Passes with nothing: each busy-waits up to 5 µs, yields, and the member parks once 50 µs
  // have gone by since the send.
  l.step = 1000;
  int passes = 0;
  while (p.hot() && passes < 1000) {
    CHECK(!pass(p));
    passes++;
  }
  CHECK(!p.hot() && !l.passing && l.stops == 1 && t.parked);
  CHECK(l.yields == passes);
  CHECK(l.now - 1000 >= 50'000);
  CHECK(passes >= 50'000 / (5000 + 1000) - 1 && passes <= 50'000 / 5000 + 1);
}

void test_traffic_keeps_it_hot() {
  FakeTarget t;
  FakeLoop l;
  PollPolicy p(t, l, 50'000);
  p.start();
  p.sent(false);
  l.step = 10'000;  // each clock read: 10 µs
  // Something moves on every pass: never parked, never yields, however long it goes on.
  for (int i = 0; i < 100; i++) {
    t.polls = {true};
    CHECK(pass(p));
    CHECK(p.hot());
  }
  CHECK(l.yields == 0 && l.stops == 0 && t.park_calls == 1);
}

void test_a_send_while_hot_restarts_the_window_without_a_clock_read() {
  FakeTarget t;
  FakeLoop l;
  PollPolicy p(t, l, 50'000);
  p.start();
  p.sent(false);
  int reads = l.clock_reads;
  for (int i = 0; i < 10; i++) p.sent(false);
  CHECK(l.clock_reads == reads);
  CHECK(l.starts == 1 && t.unpark_calls == 1);
  // The sends above count as traffic for the next pass, a send between passes for the one
  // after it: the window runs from there.
  l.step = 40'000;
  p.pass_begin();  // busy-wait window: one read past its end
  p.pass_end();
  CHECK(p.hot());
  p.sent(false);
  l.step = 40'000;
  pass(p);  // takes the send's time: the window starts again here
  CHECK(p.hot());
  pass(p);
  CHECK(!p.hot());
}

void test_busy_wait_sees_data_as_it_lands() {
  FakeTarget t;
  FakeLoop l;
  PollPolicy p(t, l, 50'000);
  p.start();
  p.sent(false);
  l.step = 100;
  t.polls = {false, true};  // the pass's first read finds nothing, the second the reply
  t.data_after_reads = 3;
  CHECK(p.pass_begin());
  CHECK(t.has_data_calls == 4 && t.poll_calls == 2);
  p.pass_end();
  CHECK(l.yields == 0);  // something moved: no yield
}

void test_busy_wait_is_capped_by_a_short_window() {
  FakeTarget t;
  FakeLoop l;
  PollPolicy p(t, l, 2000);  // spinUs 2: busy-waits 2 µs, not 5
  p.start();
  p.sent(false);
  l.step = 100;
  int reads = l.clock_reads;
  p.pass_begin();
  CHECK(l.clock_reads - reads == 1 + 2000 / 100);
}

void test_park_that_finds_data_keeps_polling() {
  FakeTarget t;
  FakeLoop l;
  PollPolicy p(t, l, 10'000);
  p.start();
  p.sent(false);
  l.step = 20'000;
  t.parks = {false};  // data came as it parked
  pass(p);
  CHECK(p.hot() && l.passing && t.park_calls == 2);
  pass(p);  // the window began again at that pass
  CHECK(!p.hot() && !l.passing && t.park_calls == 3);
}

void test_never_spinning() {
  FakeTarget t;
  FakeLoop l;
  PollPolicy p(t, l, 0);
  p.start();
  p.sent(false);
  CHECK(!p.hot() && l.starts == 0);
  p.woken(true);  // a doorbell: read (by the member) and straight back to sleep
  CHECK(!p.hot() && l.starts == 0 && t.parked);
  // A send that finds the link broken: one pass soon, with no busy-wait, then parked again.
  p.sent(true);
  CHECK(p.hot() && l.starts == 1);
  int reads = t.has_data_calls;
  pass(p);
  CHECK(t.has_data_calls == reads);
  CHECK(!p.hot() && l.stops == 1 && t.parked);
}

void test_broken_send_while_hot_changes_nothing() {
  FakeTarget t;
  FakeLoop l;
  PollPolicy p(t, l, 50'000);
  p.start();
  p.sent(false);
  p.sent(true);
  CHECK(p.hot() && l.starts == 1 && t.unpark_calls == 1);
}

void test_wake_ups() {
  FakeTarget t;
  FakeLoop l;
  PollPolicy p(t, l, 50'000);
  p.start();
  // A socket (a link came up, a peer left): parked again, every flag set.
  int parks = t.park_calls;
  p.woken(false);
  CHECK(!p.hot() && t.park_calls == parks + 1 && t.parked);
  // The doorbell: hot.
  p.woken(true);
  CHECK(p.hot() && l.passing && !t.parked);
  parks = t.park_calls;
  p.woken(false);  // hot: nothing to park
  CHECK(p.hot() && t.park_calls == parks);
}

void test_stop() {
  FakeTarget t;
  FakeLoop l;
  PollPolicy p(t, l, 50'000);
  p.start();
  p.sent(false);
  p.stop();
  CHECK(!p.hot() && !l.passing && l.stops == 1);
  int polls = t.poll_calls, parks = t.park_calls;
  p.sent(false);
  p.sent(true);
  p.woken(true);
  CHECK(!pass(p));
  p.stop();
  CHECK(l.starts == 1 && l.stops == 1 && t.poll_calls == polls && t.park_calls == parks);
}

}  // namespace

int main() {
  test_start_parks_after_reading_what_came();
  test_send_goes_hot_then_parks_after_the_window();
  test_traffic_keeps_it_hot();
  test_a_send_while_hot_restarts_the_window_without_a_clock_read();
  test_busy_wait_sees_data_as_it_lands();
  test_busy_wait_is_capped_by_a_short_window();
  test_park_that_finds_data_keeps_polling();
  test_never_spinning();
  test_broken_send_while_hot_changes_nothing();
  test_wake_ups();
  test_stop();
  std::printf("poll_policy_test: ok\n");
  return 0;
}
