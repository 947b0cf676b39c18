// A member's doorbell: one eventfd that every producer writing to this member rings when it
// finds the member parked, and that consumers ring when a producer waits for space.
#pragma once

namespace shmbus {

int doorbell_create();         // -1 on failure (errno set)
void doorbell_ring(int fd);    // never blocks; a full counter still wakes the reader
void doorbell_clear(int fd);   // reads the counter back to zero

}  // namespace shmbus
