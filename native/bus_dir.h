// The bus directory: one Unix socket per member, named "<id>.sock", and a lock file per id,
// "<id>.lock", that the member holding the id keeps flock'ed for its whole life. A socket file
// whose lock is free belongs to no live member and may be removed (a stale file left by a
// crash). Lock files are removed by their last holder, so a directory of short-lived members
// with ever new ids does not fill up. Paths are reached through the directory's fd (/proc/self/fd/N/...), so a bus
// directory deeper than sun_path allows still works and a renamed or swapped path can't
// redirect us once the directory is open and checked.
#pragma once

#include <string>
#include <vector>

namespace shmbus {

// Opens the bus directory; refuses a symlink, a non-directory, another owner or a mode that
// lets anyone else in. -1 and *err on failure.
int busdir_open(const char* path, std::string* err);
// Takes the id's lock: the fd (keep it open for the member's life), or -1 with *busy set when a
// live member holds the id, or -1 with *err.
int busdir_lock(int dirfd, const std::string& id, bool* busy, std::string* err);
// Removes the lock file and lets go of the lock (on leaving).
void busdir_release(int dirfd, const std::string& id, int lock_fd);
// Whether a member listens on "<id>.sock" (tells a live holder of an id from one that is only
// being reaped or is still joining).
bool busdir_listening(int dirfd, const std::string& id);
// Binds and listens on "<id>.sock" (removing a stale file first; call with the lock held).
int busdir_listen(int dirfd, const std::string& id, std::string* err);
// The ids of all sockets in the directory (or of all files with another suffix).
std::vector<std::string> busdir_list(int dirfd, const char* suffix = ".sock");
// Connects to a member's socket (non-blocking fd), or -1 with *error_number set.
int busdir_connect(int dirfd, const std::string& id, int* error_number);
// Removes the socket file of an id no live member holds: 1 removed, 0 nothing to remove,
// -1 the id is held (its owner lives or is joining).
int busdir_reap(int dirfd, const std::string& id);
// A bus directory whose members all died (every lock free) loses their files, then the directory
// itself. Returns true if the directory is gone. Does nothing to a bus that has a live member.
bool busdir_sweep(const char* path);
// Removes this member's own socket file (on close; the lock is still held).
void busdir_unlink(int dirfd, const std::string& id);

}  // namespace shmbus
