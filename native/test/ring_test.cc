// The ring on its own: records, wrap-around with PAD, fragments, a full ring, two mappings of
// one memfd, and a consumer fed bytes it did not write (it must report, never crash).
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../ring.h"
#include "../segment.h"
#include "test.h"

using namespace shmbus;

namespace {

struct Collect : FrameSink {
  std::vector<std::vector<uint8_t>> got;
  std::vector<uint8_t> large;
  size_t larges = 0;
  void message(const uint8_t* d, size_t n) override { got.emplace_back(d, d + n); }
  uint8_t* begin_large(size_t total) override {
    large.assign(total, 0);
    return large.data();
  }
  void end_large() override {
    got.push_back(large);
    larges++;
  }
};

std::vector<uint8_t> pattern(size_t n, uint32_t seq) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; i++) v[i] = static_cast<uint8_t>(seq * 31 + i * 7);
  if (n >= 4) std::memcpy(v.data(), &seq, 4);
  return v;
}

// What the sink got is the pattern messages numbered *seen on, in order; then it is emptied.
void check_in_order(Collect& sink, uint32_t* seen) {
  for (auto& g : sink.got) {
    uint32_t seq;
    std::memcpy(&seq, g.data(), 4);
    CHECK(seq == *seen);
    CHECK(g == pattern(g.size(), seq));
    (*seen)++;
  }
  sink.got.clear();
}

struct Mapping {
  int fd = -1;
  size_t bytes = 0;
  void* a = nullptr;  // the producer's mapping
  void* b = nullptr;  // the consumer's mapping (a second mmap of the same memfd)
  explicit Mapping(size_t capacity) {
    std::string err;
    bytes = ring_mapping_bytes(capacity);
    fd = segment_create("ring-test", bytes, &err);
    CHECK(fd >= 0);
    CHECK(segment_check(fd, bytes, &err));
    CHECK(!segment_check(fd, bytes + 4096, &err));
    a = segment_map(fd, bytes, &err);
    b = segment_map(fd, bytes, &err);
    CHECK(a != nullptr && b != nullptr && a != b);
    ring_init(a, capacity);
  }
  ~Mapping() {
    segment_unmap(a, bytes);
    segment_unmap(b, bytes);
    close(fd);
  }
};

// A ring in two mappings of one memfd: its producer writes through one, its consumer reads
// through the other.
struct RingPair {
  Mapping m;
  RingProducer p;
  RingConsumer c;
  RingPair(size_t capacity, size_t max_message) : m(capacity) {
    p.attach(m.a, capacity);
    c.attach(m.b, capacity, max_message);
  }
  // Reads all that is committed, which must be sound.
  void drain(FrameSink& sink) {
    size_t got;
    CHECK(c.drain(sink, ~size_t{0}, &got) == RingConsumer::kOk);
  }
};

void test_small_and_wrap() {
  RingPair r(4096, 1 << 20);
  auto& p = r.p;
  Collect sink;
  uint32_t sent = 0, seen = 0;
  std::mt19937 rng(1);
  for (int round = 0; round < 5000; round++) {
    // Write until full, then read all: many wraps, with every alignment of the PAD.
    for (;;) {
      auto msg = pattern(4 + rng() % 200, sent);
      Part part = {msg.data(), msg.size()};
      size_t progress = 0;
      auto st = p.write(&part, 1, msg.size(), &progress);
      CHECK(st != RingProducer::kCorrupt);
      if (st == RingProducer::kFull) {
        CHECK(progress == 0);
        break;
      }
      sent++;
      if (rng() % 3 == 0) break;
    }
    bool wake = p.commit();
    (void)wake;
    r.drain(sink);
    check_in_order(sink, &seen);
    CHECK(p.queued() == 0);
  }
  CHECK(seen == sent && sent > 2000);
}

void test_fragments() {
  const size_t cap = 64 << 10;
  RingPair r(cap, 4 << 20);
  auto& p = r.p;
  Collect sink;
  std::mt19937 rng(2);
  for (uint32_t seq = 0; seq < 200; seq++) {
    size_t n = seq % 5 == 0 ? 3 << 20 : 1 + rng() % (200 << 10);
    auto head = pattern(8, seq);
    auto body = pattern(n, seq + 1000);
    Part parts[2] = {{head.data(), head.size()}, {body.data(), body.size()}};
    size_t total = head.size() + body.size(), progress = 0;
    while (p.write(parts, 2, total, &progress) != RingProducer::kDone) {
      p.commit();
      r.drain(sink);
    }
    p.commit();
    r.drain(sink);
    CHECK(sink.got.size() == 1);
    std::vector<uint8_t> want = head;
    want.insert(want.end(), body.begin(), body.end());
    CHECK(sink.got[0] == want);
    sink.got.clear();
  }
  CHECK(sink.larges > 0);
  // A message larger than the consumer allows is refused as corrupt.
  RingPair small(cap, 100 << 10);
  auto big = pattern(200 << 10, 1);
  Part part = {big.data(), big.size()};
  size_t progress = 0;
  small.p.write(&part, 1, big.size(), &progress);
  small.p.commit();
  size_t got;
  CHECK(small.c.drain(sink, ~size_t{0}, &got) == RingConsumer::kCorrupt);
}

void test_waiting_flags() {
  RingPair r(4096, 1 << 20);
  auto& p = r.p;
  auto& c = r.c;
  Collect sink;
  uint8_t x[16] = {};
  Part part = {x, sizeof x};
  size_t progress = 0;
  // A new ring counts its consumer as parked: the first commit wakes it, once.
  CHECK(p.write(&part, 1, sizeof x, &progress) == RingProducer::kDone);
  CHECK(p.commit());
  progress = 0;
  CHECK(p.write(&part, 1, sizeof x, &progress) == RingProducer::kDone);
  CHECK(!p.commit());
  c.set_waiting(true);
  CHECK(c.has_data());
  size_t got;
  CHECK(c.drain(sink, ~size_t{0}, &got) == RingConsumer::kOk && got == 2);
  CHECK(!c.has_data());
  progress = 0;
  CHECK(p.write(&part, 1, sizeof x, &progress) == RingProducer::kDone);
  CHECK(p.commit());
  CHECK(!c.take_producer_waiting());
  p.want_space();
  CHECK(c.take_producer_waiting());
  CHECK(!c.take_producer_waiting());
}

// The consumer reads bytes a hostile or broken producer wrote: it may report corruption or read
// records, never read outside the ring (ASan watches) or loop for ever.
void test_fuzz_consumer() {
  const size_t cap = 4096;
  std::mt19937_64 rng(3);
  for (int iter = 0; iter < 8000; iter++) {
    Mapping m(cap);
    auto* base = static_cast<uint8_t*>(m.a);
    auto* hdr = static_cast<RingHeader*>(m.a);
    uint8_t* data = base + kRingHeaderBytes;
    // Start from a valid ring, then damage it.
    RingProducer p;
    p.attach(m.a, cap);
    std::vector<uint8_t> msg(1 + rng() % 3000);
    Part part = {msg.data(), msg.size()};
    for (int k = 0; k < 3; k++) {
      size_t progress = 0;
      p.write(&part, 1, msg.size(), &progress);
    }
    p.commit();
    int damage = static_cast<int>(rng() % 6);
    for (int k = 0; k <= damage; k++) {
      size_t at = rng() % cap;
      data[at] = static_cast<uint8_t>(rng());
      if (rng() % 4 == 0) {
        uint32_t v = static_cast<uint32_t>(rng());
        std::memcpy(data + (at & ~size_t{7}), &v, 4);
      }
    }
    if (rng() % 5 == 0) hdr->tail = rng() % (2 * cap);
    RingConsumer c;
    c.attach(m.b, cap, 1 << 16);
    Collect sink;
    for (int k = 0; k < 4; k++) {
      size_t got;
      if (c.drain(sink, ~size_t{0}, &got) == RingConsumer::kCorrupt) {
        CHECK(!c.error().empty());
        break;
      }
    }
  }
  // A producer whose consumer index is corrupt stops writing.
  Mapping m(cap);
  RingProducer p;
  p.attach(m.a, cap);
  static_cast<RingHeader*>(m.b)->head = 12345;  // past anything published
  uint8_t x[64] = {};
  Part part = {x, sizeof x};
  for (int i = 0; i < 200; i++) {
    size_t progress = 0;
    if (p.write(&part, 1, sizeof x, &progress) != RingProducer::kDone) break;
    p.commit();
  }
  CHECK(p.corrupt() || p.queued() == ~uint64_t{0});
}

}  // namespace

// Pages of the mapping `base` (`bytes` long) from byte `from` on that are in memory.
size_t resident_pages(void* base, size_t bytes, size_t from) {
  size_t pages = (bytes + 4095) / 4096;
  std::vector<unsigned char> v(pages);
  CHECK(mincore(base, bytes, v.data()) == 0);
  size_t n = 0;
  for (size_t i = from / 4096; i < pages; i++) n += v[i] & 1;
  return n;
}

// A ring with little traffic touches its first kRingStartBytes only, however long it runs; a
// stream grows it to its whole size; shrink() once it is empty gives the pages back. PAD records
// below the ring's end never count as queued bytes, and everything arrives in order.
void test_growth() {
  const size_t cap = 1 << 20;
  RingPair r(cap, 8 << 20);
  auto& p = r.p;
  const Mapping& m = r.m;
  CHECK(p.limit() == kRingStartBytes);
  Collect sink;
  uint32_t sent = 0, seen = 0;
  auto check_got = [&] {
    r.drain(sink);
    check_in_order(sink, &seen);
  };
  // 20,000 messages of 100-600 bytes, read as they come: 10 MB through a ring that stays small.
  std::mt19937 rng(7);
  for (int i = 0; i < 20000; i++) {
    auto msg = pattern(100 + rng() % 500, sent++);
    Part part = {msg.data(), msg.size()};
    size_t progress = 0;
    CHECK(p.write(&part, 1, msg.size(), &progress) == RingProducer::kDone);
    p.commit();
    CHECK(p.queued() == align8(kRecordHeader + msg.size()));  // no PAD counted
    check_got();
  }
  CHECK(p.limit() == kRingStartBytes);
  const size_t past_start = kRingHeaderBytes + kRingStartBytes + 4096;  // + the PAD's page
  CHECK(resident_pages(m.a, m.bytes, past_start) == 0);
  // A stream of 200 KiB messages, the consumer behind: the ring grows to its whole size.
  for (int round = 0; round < 200 && p.limit() < cap; round++) {
    for (;;) {
      auto msg = pattern(200 << 10, sent);
      Part part = {msg.data(), msg.size()};
      size_t progress = 0;
      auto st = p.write(&part, 1, msg.size(), &progress);
      p.commit();
      while (progress < msg.size()) {
        r.drain(sink);
        st = p.write(&part, 1, msg.size(), &progress);
        p.commit();
      }
      CHECK(st == RingProducer::kDone);
      sent++;
      if (rng() % 2 == 0) break;
    }
    check_got();
  }
  CHECK(p.limit() == cap);
  CHECK(resident_pages(m.a, m.bytes, past_start) > 128);
  // Not while something is in flight; then back to the start size, the pages given back.
  auto msg = pattern(1000, sent++);
  Part part = {msg.data(), msg.size()};
  size_t progress = 0;
  CHECK(p.write(&part, 1, msg.size(), &progress) == RingProducer::kDone);
  p.commit();
  bool wake;
  CHECK(!p.shrink(&wake) && p.limit() == cap);
  check_got();
  CHECK(p.shrink(&wake) && p.limit() == kRingStartBytes);
  CHECK(resident_pages(m.a, m.bytes, kRingHeaderBytes + kRingStartBytes + 8192) <= 1);
  CHECK(resident_pages(m.b, m.bytes, kRingHeaderBytes + kRingStartBytes + 8192) <= 1);
  // And it goes on working, small again.
  for (int i = 0; i < 5000; i++) {
    auto small = pattern(300, sent++);
    Part sp = {small.data(), small.size()};
    size_t pr = 0;
    CHECK(p.write(&sp, 1, small.size(), &pr) == RingProducer::kDone);
    p.commit();
    check_got();
  }
  CHECK(seen == sent);
  CHECK(p.limit() == kRingStartBytes);
}

int main() {
  test_small_and_wrap();
  test_fragments();
  test_growth();
  test_waiting_flags();
  test_fuzz_consumer();
  std::puts("ring_test: ok");
  return 0;
}
