// The floor of the shm transport, for `shmbus bench --transports floor`: two members of a bus
// (the same Member, rings, records, handshake and doorbell rules as shm) driven by native code
// alone, busy-polling, with no event loop and no JS between a message and its answer. Each
// message is copied out of the ring once, as the binding does; every message is checked.
//
// One process runs floor_drive() (the driver, member `id`) and the other floor_serve() (the
// peer): the peer echoes pings, and counts and checks the messages of a throughput run. A message
// is an 8-byte head {u32 kind, u32 arg} and a body, sent as two parts like the bus's frames.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace shmbus {

struct FloorOptions {
  std::string dir;      // the bus directory (exists, mode 0700)
  std::string id;       // this member's id
  std::string peer_id;  // the other's
  size_t ring_capacity = size_t{1} << 20;
  size_t max_message = size_t{64} << 20;
  // The bus's backpressure: a sender waits while this many bytes are queued for the peer, until
  // fewer than half are (maxQueueBytes and drain()).
  uint64_t max_queue = uint64_t{64} << 20;
};

struct FloorPlan {
  std::vector<size_t> payloads;
  uint64_t warmup_ns = 0;
  uint64_t rtt_ns = 0;  // round trips: at least this long (and 5 of them)
  uint64_t tp_ns = 0;   // throughput: messages sent for this long
};

struct FloorResult {
  size_t payload = 0;
  // Round trips, ns.
  uint64_t p50 = 0, p99 = 0, p999 = 0, max = 0, count = 0;
  // Throughput: messages sent and checked by the peer, from the first send to the peer's answer.
  uint64_t msgs = 0;
  double seconds = 0;
  // CPU time of both processes, user + system, over each phase.
  double rtt_cpu_ms = 0, tp_cpu_ms = 0;
};

// Both return false and set *err if a phase failed (no peer, a link gone, a wrong message, a
// stall of 60 s).
bool floor_drive(const FloorOptions& options, const FloorPlan& plan,
                 const std::function<void(const FloorResult&)>& on_result, std::string* err);
// Until the driver says quit.
bool floor_serve(const FloorOptions& options, std::string* err);

}  // namespace shmbus
