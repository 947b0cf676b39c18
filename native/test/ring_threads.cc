// A producer thread and a consumer thread on one ring, with the doorbell protocol of the real
// members: random sizes (some fragmented), wrap-around and PAD records, sequence numbers and
// content checks, "waiting" flags and eventfd wake-ups both ways. A lost wake-up shows as a
// timeout and fails the test.
//   one-mapping:  both threads use one mapping (for ThreadSanitizer, which tracks addresses)
//   two-mappings: each thread maps the memfd itself, as two processes do
// and a second argument `light`: the rings' light mode (see ring.h), where only the parking
// consumer and the producer that waits for space fence, with membarrier(2).
#include <poll.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../doorbell.h"
#include "../ring.h"
#include "../segment.h"
#include "test.h"

using namespace shmbus;

namespace {

constexpr size_t kCapacity = 64 << 10;
constexpr uint32_t kMessages = 300000;

size_t message_size(std::mt19937& rng, uint32_t seq) {
  if (seq % 997 == 0) return 100000 + rng() % 200000;  // fragmented: larger than the ring
  if (seq % 101 == 0) return 4000 + rng() % 12000;     // one record, a good part of the ring
  return 8 + rng() % 300;
}

uint8_t byte_at(uint32_t seq, size_t i) { return static_cast<uint8_t>(seq * 131 + i * 17 + (i >> 8)); }

bool wait_readable(int fd) {
  struct pollfd p = {fd, POLLIN, 0};
  int r = poll(&p, 1, 5000);
  return r == 1;
}

struct Check : FrameSink {
  uint32_t next = 0;
  std::vector<uint8_t> large;
  void verify(const uint8_t* d, size_t n) {
    CHECK(n >= 4);
    uint32_t seq;
    std::memcpy(&seq, d, 4);
    CHECK(seq == next);
    for (size_t i = 4; i < n; i++) CHECK(d[i] == byte_at(seq, i));
    next++;
  }
  void message(const uint8_t* d, size_t n) override { verify(d, n); }
  uint8_t* begin_large(size_t total) override {
    large.resize(total);
    return large.data();
  }
  void end_large() override { verify(large.data(), large.size()); }
};

}  // namespace

int main(int argc, char** argv) {
  const bool two = argc > 1 && std::string(argv[1]) == "two-mappings";
  const bool light = argc > 2 && std::string(argv[2]) == "light";
  if (light && !ring_light_barriers()) {
    std::printf("ring_threads (%s, light): this kernel refuses membarrier; light mode is not used here\n",
                two ? "two mappings" : "one mapping");
    return 0;
  }
  std::string err;
  const size_t bytes = ring_mapping_bytes(kCapacity);
  int fd = segment_create("ring-threads", bytes, &err);
  CHECK(fd >= 0);
  void* shared = segment_map(fd, bytes, &err);
  CHECK(shared != nullptr);
  ring_init(shared, kCapacity);
  int consumer_bell = doorbell_create();
  int producer_bell = doorbell_create();
  CHECK(consumer_bell >= 0 && producer_bell >= 0);

  std::thread producer([&] {
    void* base = shared;
    if (two) base = segment_map(fd, bytes, &err);
    CHECK(base != nullptr);
    RingProducer p;
    p.attach(base, kCapacity);
    p.set_light(light);
    std::mt19937 rng(7);
    std::vector<uint8_t> msg;
    for (uint32_t seq = 0; seq < kMessages; seq++) {
      msg.resize(message_size(rng, seq));
      std::memcpy(msg.data(), &seq, 4);
      for (size_t i = 4; i < msg.size(); i++) msg[i] = byte_at(seq, i);
      Part part = {msg.data(), msg.size()};
      size_t progress = 0;
      for (;;) {
        RingProducer::Status st = p.write(&part, 1, msg.size(), &progress);
        CHECK(st != RingProducer::kCorrupt);
        // Publish in batches, as a sender does at the end of a send() call.
        if (st == RingProducer::kFull || seq % 8 == 0 || seq + 1 == kMessages) {
          if (p.commit()) doorbell_ring(consumer_bell);
        }
        if (st == RingProducer::kDone) break;
        p.want_space();
        if (p.write(&part, 1, msg.size(), &progress) == RingProducer::kDone) {
          if (p.commit()) doorbell_ring(consumer_bell);
          break;
        }
        if (p.commit()) doorbell_ring(consumer_bell);
        if (p.queued() > 0) {
          CHECK(wait_readable(producer_bell));
          doorbell_clear(producer_bell);
        }
      }
    }
    if (two) segment_unmap(base, bytes);
  });

  std::thread consumer([&] {
    void* base = shared;
    if (two) base = segment_map(fd, bytes, &err);
    CHECK(base != nullptr);
    RingConsumer c;
    c.attach(base, kCapacity, 1 << 20);
    c.set_light(light);
    Check sink;
    int idle = 0;
    while (sink.next < kMessages) {
      size_t got;
      CHECK(c.drain(sink, 1 << 20, &got) == RingConsumer::kOk);
      if (c.take_producer_waiting()) doorbell_ring(producer_bell);
      if (got > 0) {
        idle = 0;
        continue;
      }
      if (++idle < 50) continue;  // spin a little, then park
      c.set_waiting(true);
      if (light) ring_heavy_barrier();
      if (!c.has_data()) {
        CHECK(wait_readable(consumer_bell));
        doorbell_clear(consumer_bell);
      }
      c.set_waiting(false);
      idle = 0;
    }
    CHECK(!c.has_data());
    if (two) segment_unmap(base, bytes);
  });

  producer.join();
  consumer.join();
  segment_unmap(shared, bytes);
  close(fd);
  close(consumer_bell);
  close(producer_bell);
  std::printf("ring_threads (%s%s): ok\n", two ? "two mappings" : "one mapping", light ? ", light" : "");
  return 0;
}
