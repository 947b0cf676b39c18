// Single-producer single-consumer ring in shared memory (Agrona's ring layout).
//
// The mapping is a RingHeader followed by `capacity` bytes of records. A record is
// {u32 length, u32 type} + payload, 8-byte aligned; `length` counts the 8-byte header and the
// payload, not the alignment. A record never crosses the end: a PAD record fills the rest.
// The producer publishes records by storing `tail` with release order; the consumer frees them
// by storing `head`. Both indices only grow; their offset is index & (capacity - 1).
// Unlike Agrona, where a record's length stored last publishes it, here the tail store does: the
// consumer then has no zeroing pass to make over what it read (a write of every byte it read,
// on top of the copy out), and it reads lengths only inside [head, tail).
//
// Everything in the mapping can be written by the other process at any time, so each side keeps
// its own index locally and checks every value it reads from the other (a corrupt ring is
// reported, never followed out of bounds).
//
// The doorbell handshakes are two Dekker pairs: the producer stores tail then loads
// consumer_waiting, the parking consumer stores consumer_waiting then loads tail (and the same
// with head and producer_waiting for a producer that waits for space). Each side needs a full
// barrier between its store and its load, or both can miss the other's store and the wake-up is
// lost. In plain mode each side fences on every commit and every head store: on x86 a locked
// instruction that waits for the store to reach the other core, on every message. In light
// mode (both processes registered for membarrier(2), see ring_light_barriers()) the producer's
// commit does not fence: the consumer that parks issues ring_heavy_barrier(), which runs a full
// barrier on every thread of the other process that is running at that moment (a thread that
// is not running passes one when it is switched in). The producer's store and load are then
// ordered by that barrier: either its load came after it and sees the flag, or its store came
// before it and the parking consumer sees the data. The head side stays fenced in both modes:
// the consumer stores head once per drain, not per record, while a producer waiting for space
// asks again on every lap of the ring (a global barrier each time cost more than it saved).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace shmbus {

constexpr uint32_t kRingMagic = 0x53484d52;  // "RMHS"
constexpr uint32_t kRingVersion = 1;
constexpr size_t kRingHeaderBytes = 1024;
constexpr size_t kRingMinCapacity = 4096;
constexpr size_t kRingMaxCapacity = size_t{1} << 30;
constexpr size_t kRecordHeader = 8;
// A producer starts by using only this much of its ring (wrapping early, with a PAD record to
// the ring's end), so that rings with little traffic touch few pages; see RingProducer.
constexpr size_t kRingStartBytes = size_t{64} << 10;
// ...and doubles what it uses when it finds the ring full after this many times what it uses
// has gone through it: a stream grows its ring, one large message does not.
constexpr size_t kRingGrowAfterLaps = 16;

struct RingHeader {
  alignas(128) uint32_t magic;
  uint32_t version;
  uint64_t capacity;
  uint32_t flags;                           // kRingFlag*, set by the producer at ring_init
  alignas(128) uint64_t tail;               // written by the producer
  alignas(128) uint64_t head;               // written by the consumer
  alignas(128) uint32_t consumer_waiting;   // consumer is parked: ring its doorbell
  alignas(128) uint32_t producer_waiting;   // producer waits for space: ring its doorbell
};
static_assert(sizeof(RingHeader) <= kRingHeaderBytes, "ring header too large");

enum RecordType : uint32_t {
  kRecordPad = 1,
  kRecordMessage = 2,  // a whole message
  kRecordFirst = 3,    // u64 total length, then the first bytes of a fragmented message
  kRecordMore = 4,
  kRecordLast = 5,
};

inline bool ring_capacity_ok(size_t capacity) {
  return capacity >= kRingMinCapacity && capacity <= kRingMaxCapacity &&
         (capacity & (capacity - 1)) == 0;
}
inline size_t ring_mapping_bytes(size_t capacity) { return kRingHeaderBytes + capacity; }
inline size_t align8(size_t n) { return (n + 7) & ~size_t{7}; }

// The largest record either side writes or accepts as one piece of a message.
inline size_t ring_max_record(size_t capacity) {
  size_t r = capacity / 4;
  return r > (size_t{256} << 10) ? (size_t{256} << 10) : r;
}

// The process that made the ring can use light mode (it is registered for membarrier).
constexpr uint32_t kRingFlagLight = 1;

// Initialises a fresh (zero-filled) mapping; only the producer that created it calls this.
// flags: kRingFlagLight if ring_light_barriers() said so.
void ring_init(void* base, size_t capacity, uint32_t flags = 0);
// The flags the ring's maker set (read once, when the consumer attaches).
uint32_t ring_flags(const void* base);

// Registers this process for membarrier(2)'s global expedited barriers (once, at first call):
// true if both this process and a peer that says the same may use light mode on a ring they
// share. False where the kernel or a seccomp filter refuses it.
bool ring_light_barriers();
// A full barrier here and on every running thread of every registered process (light mode's
// rare side). Falls back to a fence here alone if the kernel refuses it (it did not at
// registration, so it does not).
void ring_heavy_barrier();

struct Part {
  const uint8_t* data;
  size_t len;
};

// The producer uses the first `limit` bytes of the ring (kRingStartBytes at first, the whole ring
// once traffic has grown it): where a record would not fit below the limit, a PAD record runs to
// the ring's end. The consumer needs no notion of the limit (a PAD always ends at the ring's
// end), and pages past it stay untouched until the ring grows.
class RingProducer {
 public:
  enum Status { kDone, kFull, kCorrupt };

  void attach(void* base, size_t capacity);
  bool attached() const { return hdr_ != nullptr; }
  // Light mode (see the top of this file): only when both processes can use it.
  void set_light(bool on) { light_ = on; }
  bool light() const { return light_; }

  // Writes message bytes [*progress, total) as records, as far as space allows, advancing
  // *progress. The concatenation of parts holds the message's bytes from `base` on
  // (base <= *progress). kDone when all of it is in the ring. Records become visible to the
  // consumer at commit().
  Status write(const Part* parts, int nparts, size_t total, size_t* progress, size_t base = 0);
  // Publishes what write() put in the ring. Returns true if the consumer is parked and must be
  // woken (the flag is cleared, so one wake-up per park).
  bool commit();
  // Bytes in the ring not yet freed by the consumer; ~0 if the consumer's index is corrupt.
  // Reads the consumer's index: a cache miss while the consumer is busy.
  uint64_t queued() const;
  // At least queued(), from what the producer last read of the consumer's index (no shared
  // memory read).
  uint64_t queued_at_most() const;
  // Asks the consumer to ring our doorbell when it frees space. The caller looks at the ring
  // again afterwards: space freed just before the flag was set brings no wake-up.
  void want_space();
  bool corrupt() const { return corrupt_; }
  // How much of the ring is in use (see above), and whether it has grown past the start.
  size_t limit() const { return limit_; }
  // The producer's own index: changes with every record written.
  uint64_t tail() const { return tail_; }
  // Back to kRingStartBytes, giving the pages past it back to the system, if the consumer has
  // taken everything. false if it has not (nothing changes then). *wake: ring the consumer's
  // doorbell (shrinking may publish a PAD record, and commit() took its parked flag).
  bool shrink(bool* wake);

 private:
  uint8_t* reserve(size_t min_bytes, size_t max_bytes, size_t* got);
  bool read_head();
  bool grow();
  void release(size_t from, size_t to);

  RingHeader* hdr_ = nullptr;
  uint8_t* data_ = nullptr;
  size_t capacity_ = 0;
  size_t limit_ = 0;
  uint64_t tail_ = 0;
  uint64_t head_cache_ = 0;
  uint64_t written_since_growth_ = 0;
  // The last PAD record: its index and length. A PAD is no queued data, and at most one is
  // between head and tail (one per lap, at its end).
  uint64_t pad_index_ = 0;
  uint64_t pad_bytes_ = 0;
  bool corrupt_ = false;
  bool light_ = false;
};

// Receives what RingConsumer::drain reads. Pointers passed to message() are valid only during
// the call.
class FrameSink {
 public:
  virtual ~FrameSink() = default;
  virtual void message(const uint8_t* data, size_t len) = 0;
  // A fragmented message of `total` bytes begins: return where to assemble it, nullptr to refuse.
  virtual uint8_t* begin_large(size_t total) = 0;
  virtual void end_large() = 0;
};

class RingConsumer {
 public:
  enum Status { kOk, kCorrupt };

  void attach(void* base, size_t capacity, size_t max_message);
  bool attached() const { return hdr_ != nullptr; }
  void set_light(bool on) { light_ = on; }
  bool light() const { return light_; }

  // Reads committed records (at most about max_bytes of them) into sink. *got = records read.
  Status drain(FrameSink& sink, size_t max_bytes, size_t* got);
  // Whether committed records wait to be read (a corrupt tail counts as data: drain reports it).
  bool has_data() const;
  // In light mode, set_waiting(true) is a plain store: call ring_heavy_barrier() between it and
  // the has_data() that decides to sleep (one barrier serves every ring a member parks on).
  void set_waiting(bool on);
  // True if the producer asked for space and is to be woken (clears its flag).
  bool take_producer_waiting();
  const std::string& error() const { return error_; }
  // A fragmented message is begun and not finished (also after a failure: drop its buffer).
  bool assembling() const { return large_ != nullptr; }

 private:
  Status fail(const char* what);
  void store_head();

  RingHeader* hdr_ = nullptr;
  const uint8_t* data_ = nullptr;
  size_t capacity_ = 0;
  size_t max_message_ = 0;
  uint64_t head_ = 0;
  uint8_t* large_ = nullptr;
  size_t large_total_ = 0;
  size_t large_filled_ = 0;
  bool light_ = false;
  std::string error_;
};

}  // namespace shmbus
