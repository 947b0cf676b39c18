// Shared-memory segments: sealed memfds. The creator fixes the size and seals it against shrink
// and grow, so the other side's mapping can never fault past the end (no SIGBUS). The kernel
// frees a memfd with its last fd and mapping, so nothing outlives the processes.
#pragma once

#include <cstddef>
#include <string>

namespace shmbus {

// A new memfd of `bytes`, zero-filled, sealed; -1 and *err on failure.
int segment_create(const char* name, size_t bytes, std::string* err);
// Checks a memfd received from a peer: the seals are set and its size is `bytes`.
bool segment_check(int fd, size_t bytes, std::string* err);
// Maps it read-write shared; nullptr and *err on failure.
void* segment_map(int fd, size_t bytes, std::string* err);
void segment_unmap(void* base, size_t bytes);

}  // namespace shmbus
