#include "ring.h"

#include <linux/membarrier.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

namespace shmbus {

namespace {

template <typename T>
T load_acquire(const T* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
template <typename T>
T load_sc(const T* p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
template <typename T>
void store_sc(T* p, T v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
template <typename T>
void store_release(T* p, T v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
template <typename T>
T load_relaxed(const T* p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }

long membarrier(int cmd) { return syscall(__NR_membarrier, cmd, 0, 0); }

void put_header(uint8_t* p, uint32_t length, uint32_t type) {
  std::memcpy(p, &length, 4);
  std::memcpy(p + 4, &type, 4);
}

// Copies bytes [offset, offset + len) of the concatenation of parts to dst.
void gather(uint8_t* dst, const Part* parts, int nparts, size_t offset, size_t len) {
  for (int i = 0; i < nparts && len > 0; i++) {
    if (offset >= parts[i].len) {
      offset -= parts[i].len;
      continue;
    }
    size_t n = parts[i].len - offset;
    if (n > len) n = len;
    std::memcpy(dst, parts[i].data + offset, n);
    dst += n;
    len -= n;
    offset = 0;
  }
}

}  // namespace

bool ring_light_barriers() {
  // Registration is for the whole process; a trial barrier proves the command is allowed too.
  static const bool ok = membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) == 0 &&
                         membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0;
  return ok;
}

void ring_heavy_barrier() {
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED);
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

uint32_t ring_flags(const void* base) { return load_relaxed(&static_cast<const RingHeader*>(base)->flags); }

void ring_init(void* base, size_t capacity, uint32_t flags) {
  auto* hdr = static_cast<RingHeader*>(base);
  hdr->magic = kRingMagic;
  hdr->version = kRingVersion;
  hdr->capacity = capacity;
  hdr->flags = flags;
  hdr->tail = 0;
  hdr->head = 0;
  // A new ring's consumer has not looked at it yet: treat it as parked so that the first record
  // rings its doorbell.
  hdr->consumer_waiting = 1;
  hdr->producer_waiting = 0;
}

// ---- producer ---------------------------------------------------------------------------------

void RingProducer::attach(void* base, size_t capacity) {
  hdr_ = static_cast<RingHeader*>(base);
  data_ = static_cast<uint8_t*>(base) + kRingHeaderBytes;
  capacity_ = capacity;
  limit_ = capacity < kRingStartBytes ? capacity : kRingStartBytes;
  tail_ = head_cache_ = 0;
  written_since_growth_ = pad_index_ = pad_bytes_ = 0;
  corrupt_ = false;
  light_ = false;
}

bool RingProducer::grow() {
  if (limit_ >= capacity_ || written_since_growth_ < kRingGrowAfterLaps * limit_) return false;
  limit_ *= 2;
  written_since_growth_ = 0;
  return true;
}

bool RingProducer::shrink(bool* wake) {
  *wake = false;
  if (limit_ <= kRingStartBytes || corrupt_ || !read_head() || head_cache_ != tail_) return false;
  // Nothing in flight. A tail past the start size first jumps to the next lap with a PAD, so
  // that what follows goes below the start size again; the PAD's header stays in memory until
  // the consumer has read it, everything else past the start size is given back.
  const size_t off = static_cast<size_t>(tail_ & (capacity_ - 1));
  size_t pad_page = capacity_;
  if (off > kRingStartBytes) {
    put_header(data_ + off, static_cast<uint32_t>(capacity_ - off), kRecordPad);
    pad_index_ = tail_;
    pad_bytes_ = capacity_ - off;
    tail_ += capacity_ - off;
    *wake = commit();
    pad_page = off;
  }
  release(kRingStartBytes, pad_page);
  if (pad_page < capacity_) release(pad_page + kRecordHeader, capacity_);
  limit_ = kRingStartBytes;
  written_since_growth_ = 0;
  return true;
}

// Gives back the whole pages within data bytes [from, to) (to the end of the mapping when `to`
// is the ring's end).
void RingProducer::release(size_t from, size_t to) {
  const uintptr_t page = 4096;
  uintptr_t base = reinterpret_cast<uintptr_t>(data_);
  uintptr_t first = (base + from + page - 1) & ~(page - 1);
  uintptr_t last = to == capacity_ ? (base + to + page - 1) & ~(page - 1) : (base + to) & ~(page - 1);
  if (first < last) madvise(reinterpret_cast<void*>(first), last - first, MADV_REMOVE);
}

bool RingProducer::read_head() {
  uint64_t published = load_acquire(&hdr_->tail);
  uint64_t h = load_sc(&hdr_->head);
  // The consumer can only move head forward, in whole records, up to what was published.
  if ((h & 7) != 0 || h - head_cache_ > published - head_cache_) {
    corrupt_ = true;
    return false;
  }
  head_cache_ = h;
  return true;
}

uint8_t* RingProducer::reserve(size_t min_bytes, size_t max_bytes, size_t* got) {
  for (int attempt = 0; attempt < 3; attempt++) {
    if (attempt == 1 && !read_head()) return nullptr;
    if (attempt == 2 && !grow()) return nullptr;
    size_t free = capacity_ - static_cast<size_t>(tail_ - head_cache_);
    size_t off = static_cast<size_t>(tail_ & (capacity_ - 1));
    // Records go below the limit; a tail already past it (the ring shrank) runs to the end.
    size_t end = off <= limit_ ? limit_ : capacity_;
    size_t contig = end - off;
    if (contig >= min_bytes) {
      if (free < min_bytes) continue;
      size_t n = max_bytes;
      if (n > contig) n = contig;
      if (n > free) n = free;
      n &= ~size_t{7};
      tail_ += n;
      written_since_growth_ += n;
      *got = n;
      return data_ + off;
    }
    size_t pad = capacity_ - off;
    if (free < pad + min_bytes) continue;
    put_header(data_ + off, static_cast<uint32_t>(pad), kRecordPad);
    pad_index_ = tail_;
    pad_bytes_ = pad;
    tail_ += pad;
    free -= pad;
    size_t n = max_bytes < free ? max_bytes : free;
    if (n > limit_) n = limit_;
    n &= ~size_t{7};
    tail_ += n;
    written_since_growth_ += n;
    *got = n;
    return data_;
  }
  return nullptr;
}

RingProducer::Status RingProducer::write(const Part* parts, int nparts, size_t total,
                                         size_t* progress, size_t base) {
  if (corrupt_) return kCorrupt;
  const size_t max_record = ring_max_record(limit_);
  if (*progress == 0 && kRecordHeader + total <= max_record) {
    size_t need = align8(kRecordHeader + total), got;
    uint8_t* p = reserve(need, need, &got);
    if (p == nullptr) return corrupt_ ? kCorrupt : kFull;
    put_header(p, static_cast<uint32_t>(kRecordHeader + total), kRecordMessage);
    gather(p + kRecordHeader, parts, nparts, 0, total);  // base is 0 here
    *progress = total;
    return kDone;
  }
  while (*progress < total) {
    const bool first = *progress == 0;
    const size_t hdr = kRecordHeader + (first ? 8 : 0);
    const size_t remaining = total - *progress;
    size_t max_bytes = align8(hdr + remaining);
    if (max_bytes > max_record) max_bytes = max_record;
    // Fill the space there is, in pieces no smaller than 4 KiB (or the rest of the message).
    size_t min_bytes = align8(hdr + 4096);
    if (min_bytes > max_bytes) min_bytes = max_bytes;
    size_t got;
    uint8_t* p = reserve(min_bytes, max_bytes, &got);
    if (p == nullptr) return corrupt_ ? kCorrupt : kFull;
    size_t payload = got - hdr;
    if (payload > remaining) payload = remaining;
    uint32_t type = first ? kRecordFirst : payload == remaining ? kRecordLast : kRecordMore;
    put_header(p, static_cast<uint32_t>(hdr + payload), type);
    if (first) {
      uint64_t t = total;
      std::memcpy(p + kRecordHeader, &t, 8);
    }
    gather(p + hdr, parts, nparts, *progress - base, payload);
    *progress += payload;
  }
  return kDone;
}

bool RingProducer::commit() {
  if (light_) {
    // Ordered against a parking consumer by its ring_heavy_barrier() (see ring.h).
    store_release(&hdr_->tail, tail_);
    if (load_relaxed(&hdr_->consumer_waiting) == 0) return false;
  } else {
    store_sc(&hdr_->tail, tail_);
    if (load_sc(&hdr_->consumer_waiting) == 0) return false;
  }
  return __atomic_exchange_n(&hdr_->consumer_waiting, 0u, __ATOMIC_SEQ_CST) != 0;
}

uint64_t RingProducer::queued_at_most() const {
  uint64_t q = tail_ - head_cache_;
  if (pad_bytes_ != 0 && pad_index_ - head_cache_ < q) q -= pad_bytes_;
  return q;
}

uint64_t RingProducer::queued() const {
  uint64_t h = load_sc(&hdr_->head);
  uint64_t published = load_acquire(&hdr_->tail);
  if ((h & 7) != 0 || h - head_cache_ > published - head_cache_) return ~uint64_t{0};
  uint64_t q = tail_ - h;
  if (pad_bytes_ != 0 && pad_index_ - h < q) q -= pad_bytes_;
  return q;
}

void RingProducer::want_space() {
  // Still set from an earlier call: the consumer has not taken it yet, so it will, after its
  // next head store (it clears the flag only when it takes it).
  if (load_sc(&hdr_->producer_waiting) != 0) return;
  store_sc(&hdr_->producer_waiting, 1u);
}

// ---- consumer ---------------------------------------------------------------------------------

void RingConsumer::attach(void* base, size_t capacity, size_t max_message) {
  hdr_ = static_cast<RingHeader*>(base);
  data_ = static_cast<const uint8_t*>(base) + kRingHeaderBytes;
  capacity_ = capacity;
  max_message_ = max_message;
  head_ = 0;
  large_ = nullptr;
  light_ = false;
}

RingConsumer::Status RingConsumer::fail(const char* what) {
  error_ = what;
  // large_ stays set: a message being assembled is still the sink's buffer, and assembling()
  // must tell the owner to drop it (a corrupt ring never writes into it again: drain() stops).
  return kCorrupt;
}

bool RingConsumer::has_data() const { return load_sc(&hdr_->tail) != head_; }

void RingConsumer::set_waiting(bool on) {
  if (light_) __atomic_store_n(&hdr_->consumer_waiting, on ? 1u : 0u, __ATOMIC_RELAXED);
  else store_sc(&hdr_->consumer_waiting, on ? 1u : 0u);
}

bool RingConsumer::take_producer_waiting() {
  if (load_sc(&hdr_->producer_waiting) == 0) return false;
  return __atomic_exchange_n(&hdr_->producer_waiting, 0u, __ATOMIC_SEQ_CST) != 0;
}

// Fenced in both modes: a head store comes once per drain, not per record, and a fenced one
// spares the waiting producer a global barrier each time the ring fills (which interrupted the
// consumer's copy on every lap of a stream of large messages).
void RingConsumer::store_head() { store_sc(&hdr_->head, head_); }

RingConsumer::Status RingConsumer::drain(FrameSink& sink, size_t max_bytes, size_t* got) {
  *got = 0;
  if (!error_.empty()) return kCorrupt;
  const uint64_t tail = load_acquire(&hdr_->tail);
  if ((tail & 7) != 0 || tail - head_ > capacity_) return fail("tail index out of range");
  size_t bytes = 0;
  size_t count = 0;
  while (head_ != tail && bytes < max_bytes) {
    const size_t off = static_cast<size_t>(head_ & (capacity_ - 1));
    const size_t avail = static_cast<size_t>(tail - head_);
    const uint8_t* p = data_ + off;
    uint32_t length, type;
    std::memcpy(&length, p, 4);
    std::memcpy(&type, p + 4, 4);
    if (length < kRecordHeader) return fail("record length below header size");
    const size_t span = align8(length);
    if (span > avail || off + span > capacity_) return fail("record past committed data");
    const size_t payload = length - kRecordHeader;
    switch (type) {
      case kRecordPad:
        if (off + span != capacity_) return fail("pad record before the end of the ring");
        break;
      case kRecordMessage:
        if (large_ != nullptr) return fail("whole message inside a fragmented one");
        sink.message(p + kRecordHeader, payload);
        break;
      case kRecordFirst: {
        if (large_ != nullptr) return fail("fragment start inside a fragmented message");
        if (payload < 8) return fail("short first fragment");
        uint64_t total;
        std::memcpy(&total, p + kRecordHeader, 8);
        const size_t n = payload - 8;
        if (total > max_message_) return fail("fragmented message larger than the limit");
        if (total <= n) return fail("first fragment holds the whole message");
        large_ = sink.begin_large(static_cast<size_t>(total));
        if (large_ == nullptr) return fail("cannot allocate a buffer for a large message");
        std::memcpy(large_, p + kRecordHeader + 8, n);
        large_total_ = static_cast<size_t>(total);
        large_filled_ = n;
        break;
      }
      case kRecordMore:
      case kRecordLast:
        if (large_ == nullptr) return fail("fragment outside a fragmented message");
        if (payload > large_total_ - large_filled_) return fail("fragment past message end");
        std::memcpy(large_ + large_filled_, p + kRecordHeader, payload);
        large_filled_ += payload;
        if (type == kRecordLast) {
          if (large_filled_ != large_total_) return fail("last fragment before message end");
          large_ = nullptr;
          sink.end_large();
        }
        break;
      default:
        return fail("unknown record type");
    }
    head_ += span;
    bytes += span;
    count++;
    // Free big records at once so the producer can go on writing while we copy.
    if (span >= 4096) store_head();
  }
  store_head();
  *got = count;
  return kOk;
}

}  // namespace shmbus
