// libFuzzer harness: the ring reader (and writer) over a shared-memory image they did not write.
//
// The ring lives in one heap block of exactly header + capacity bytes, so AddressSanitizer sees
// any read or write past the mapping. The input drives a program of operations:
//
//   consumer mode: the image starts as arbitrary bytes (a peer's ring, header included); ops set
//     tail/head/flags to raw or plausible values, scribble bytes anywhere, and drain. While a
//     drain runs, every message the sink sees lets the "producer" scribble again (a concurrent
//     writer changing records, lengths and the tail under the reader's feet).
//   round-trip mode: an honest RingProducer and RingConsumer share the ring; messages of fuzzed
//     sizes (whole and fragmented, across the wrap) must come out exactly as they went in,
//     until an op corrupts the consumer's head index, after which the producer must report the
//     ring corrupt or stay in bounds.
//
// Invariants checked besides memory safety: a message handed to the sink lies inside the ring,
// a large message is exactly its announced size and at most the reader's limit, a ring once
// reported corrupt stays corrupt, and the producer never reports more queued bytes than the
// capacity unless it says the index is corrupt.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <vector>

#include "../ring.h"
#include "fuzz_input.h"

using namespace shmbus;

namespace {

using fuzz::die;
using fuzz::Input;

struct Ring {
  size_t capacity;
  uint8_t* block;  // exactly ring_mapping_bytes(capacity)
  RingHeader* hdr() { return reinterpret_cast<RingHeader*>(block); }
  uint8_t* data() { return block + kRingHeaderBytes; }
  explicit Ring(size_t cap) : capacity(cap), block(new uint8_t[ring_mapping_bytes(cap)]()) {}
  ~Ring() { delete[] block; }
};

// A scribble: write a few bytes somewhere in the mapping (header included), or move the tail.
void scribble(Ring& r, Input& in) {
  uint8_t what = in.u8();
  switch (what % 4) {
    case 0: {  // bytes anywhere in the mapping
      size_t off = in.u32() % ring_mapping_bytes(r.capacity);
      size_t len = in.u8() % 32;
      if (len > ring_mapping_bytes(r.capacity) - off) len = ring_mapping_bytes(r.capacity) - off;
      in.take(r.block + off, len);
      break;
    }
    case 1:  // a raw tail
      __atomic_store_n(&r.hdr()->tail, in.u64(), __ATOMIC_RELEASE);
      break;
    case 2: {  // a plausible tail: a little past the current one
      uint64_t t = __atomic_load_n(&r.hdr()->tail, __ATOMIC_RELAXED);
      __atomic_store_n(&r.hdr()->tail, t + 8 * (in.u8() % 64), __ATOMIC_RELEASE);
      break;
    }
    case 3: {  // a record header at the consumer-visible offset of some index
      // head may itself be scribbled: a record offset is 8-byte aligned, so the header fits.
      uint64_t at = (__atomic_load_n(&r.hdr()->head, __ATOMIC_RELAXED) & ~uint64_t{7}) + 8 * (in.u8() % 16);
      size_t off = static_cast<size_t>(at & (r.capacity - 1));
      uint32_t length = in.u32() % (2 * static_cast<uint32_t>(r.capacity));
      uint32_t type = in.u8() % 7;
      std::memcpy(r.data() + off, &length, 4);
      std::memcpy(r.data() + off + 4, &type, 4);
      break;
    }
  }
}

class CheckingSink : public FrameSink {
 public:
  CheckingSink(Ring& ring, size_t max_message, Input* concurrent)
      : ring_(ring), max_message_(max_message), concurrent_(concurrent) {}
  ~CheckingSink() override { delete[] large_; }

  void message(const uint8_t* data, size_t len) override {
    REQUIRE(data >= ring_.data() && len <= ring_.capacity &&
            data + len <= ring_.data() + ring_.capacity);
    last_.assign(data, data + len);  // touches every byte
    got_.push_back(last_);
    if (concurrent_ != nullptr && !concurrent_->empty()) scribble(ring_, *concurrent_);
  }
  uint8_t* begin_large(size_t total) override {
    REQUIRE(large_ == nullptr);  // the reader finishes or drops one before the next
    REQUIRE(total <= max_message_);
    if (total > (size_t{8} << 20)) return nullptr;  // "out of memory": the reader must cope
    large_ = new uint8_t[total];
    large_total_ = total;
    return large_;
  }
  void end_large() override {
    REQUIRE(large_ != nullptr);
    got_.emplace_back(large_, large_ + large_total_);
    delete[] large_;
    large_ = nullptr;
    if (concurrent_ != nullptr && !concurrent_->empty()) scribble(ring_, *concurrent_);
  }
  bool holds_large() const { return large_ != nullptr; }
  // What Member::drop does when the link goes down mid-message.
  void drop_large() {
    delete[] large_;
    large_ = nullptr;
  }
  std::deque<std::vector<uint8_t>> got_;

 private:
  Ring& ring_;
  size_t max_message_;
  Input* concurrent_;
  uint8_t* large_ = nullptr;
  size_t large_total_ = 0;
  std::vector<uint8_t> last_;
};

void consumer_mode(Input& in, size_t capacity, size_t max_message) {
  Ring ring(capacity);
  ring_init(ring.block, capacity);
  // The peer's whole image, header included, as far as the input goes.
  size_t image = in.u16();
  if (image > ring_mapping_bytes(capacity)) image = ring_mapping_bytes(capacity);
  in.take(ring.block, image);
  // The consumer trusts no header field: it was attached with the capacity from the handshake.
  RingConsumer consumer;
  consumer.attach(ring.block, capacity, max_message);
  // A second stream of scribbles, applied while a drain is running.
  size_t split = in.n / 2;
  Input concurrent{in.p + split, in.n - split};
  in.n = split;
  CheckingSink sink(ring, max_message, &concurrent);
  bool corrupt = false;
  while (!in.empty()) {
    uint8_t op = in.u8();
    if (op % 3 == 0) {
      size_t got = 0;
      size_t budget = 1 + in.u16() * 16u;
      RingConsumer::Status st = consumer.drain(sink, budget, &got);
      if (corrupt) REQUIRE(st == RingConsumer::kCorrupt && got == 0);
      // The owner closes the link the first time it sees kCorrupt; later drains only say so again.
      if (st == RingConsumer::kCorrupt && !corrupt) {
        REQUIRE(!consumer.error().empty());
        // The owner learns from assembling() that a begun message's buffer is to be dropped.
        REQUIRE(consumer.assembling() == sink.holds_large());
        corrupt = true;
        if (consumer.assembling()) sink.drop_large();
      }
      (void)consumer.has_data();
      (void)consumer.take_producer_waiting();
      consumer.set_waiting(op & 1);
    } else {
      scribble(ring, in);
    }
    sink.got_.clear();
  }
}

void round_trip_mode(Input& in, size_t capacity, size_t max_message) {
  Ring ring(capacity);
  ring_init(ring.block, capacity);
  RingProducer producer;
  producer.attach(ring.block, capacity);
  RingConsumer consumer;
  consumer.attach(ring.block, capacity, max_message);
  CheckingSink sink(ring, max_message, nullptr);
  std::deque<std::vector<uint8_t>> sent;  // whole messages, in order, not yet read
  std::vector<uint8_t> pending;            // the message being written
  size_t progress = 0;
  bool writing = false, tampered = false;
  uint32_t seq = 0;
  while (!in.empty()) {
    uint8_t op = in.u8();
    switch (op % 6) {
      case 0:
      case 1: {  // write (or go on writing) a message of a fuzzed size, in two parts
        if (!writing) {
          size_t len = op & 0x80 ? in.u32() % (4 * capacity + 1) : in.u16() % 512;
          if (len > max_message) len = max_message;
          pending.resize(len);
          for (size_t i = 0; i < len; i++) pending[i] = static_cast<uint8_t>(seq * 31 + i);
          if (len >= 4) std::memcpy(pending.data(), &seq, 4);
          seq++;
          progress = 0;
          writing = true;
        }
        size_t cut = pending.size() / 2;
        Part parts[2] = {{pending.data(), cut}, {pending.data() + cut, pending.size() - cut}};
        RingProducer::Status st = producer.write(parts, 2, pending.size(), &progress);
        REQUIRE(progress <= pending.size());
        if (st == RingProducer::kCorrupt) {
          REQUIRE(tampered);
          return;
        }
        if (st == RingProducer::kDone) {
          REQUIRE(progress == pending.size());
          sent.push_back(pending);
          writing = false;
        }
        break;
      }
      case 2:
        producer.commit();
        break;
      case 3: {  // drain and compare
        size_t got = 0;
        RingConsumer::Status st = consumer.drain(sink, 1 + in.u16() * 16u, &got);
        if (!tampered) {
          if (st != RingConsumer::kOk) die(consumer.error().c_str());
          for (auto& m : sink.got_) {
            REQUIRE(!sent.empty());
            REQUIRE(m == sent.front());
            sent.pop_front();
          }
        } else if (st == RingConsumer::kCorrupt) {
          sink.drop_large();
        }
        sink.got_.clear();
        break;
      }
      case 4: {
        uint64_t q = producer.queued();
        REQUIRE(q == ~uint64_t{0} || q <= capacity || tampered);
        if (!tampered) REQUIRE(q != ~uint64_t{0} && q <= capacity);
        producer.want_space();
        (void)consumer.take_producer_waiting();
        break;
      }
      case 5:  // a peer that lies about how far it has read
        if (op & 0x40) {
          __atomic_store_n(&ring.hdr()->head, in.u64(), __ATOMIC_SEQ_CST);
        } else {
          uint64_t h = __atomic_load_n(&ring.hdr()->head, __ATOMIC_SEQ_CST);
          __atomic_store_n(&ring.hdr()->head, h + 8 * static_cast<int8_t>(in.u8()), __ATOMIC_SEQ_CST);
        }
        tampered = true;
        break;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in{data, size};
  uint8_t shape = in.u8();
  size_t capacity = kRingMinCapacity << (shape % 5);  // 4 KiB .. 64 KiB: wraps come often
  size_t max_message = in.u32() % (size_t{2} << 20);
  if (shape & 0x80) round_trip_mode(in, capacity, max_message);
  else consumer_mode(in, capacity, max_message);
  return 0;
}
