#include "segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace shmbus {

namespace {
constexpr int kSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

std::string sys_error(const char* what) { return std::string(what) + ": " + std::strerror(errno); }
}  // namespace

int segment_create(const char* name, size_t bytes, std::string* err) {
  int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) {
    *err = sys_error("memfd_create");
    return -1;
  }
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    *err = sys_error("ftruncate");
    close(fd);
    return -1;
  }
  if (fcntl(fd, F_ADD_SEALS, kSeals) != 0) {
    *err = sys_error("F_ADD_SEALS");
    close(fd);
    return -1;
  }
  return fd;
}

bool segment_check(int fd, size_t bytes, std::string* err) {
  int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0) {
    *err = sys_error("F_GET_SEALS (not a memfd?)");
    return false;
  }
  if ((seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW)) {
    *err = "segment is not sealed against resizing";
    return false;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    *err = sys_error("fstat");
    return false;
  }
  if (!S_ISREG(st.st_mode) || static_cast<size_t>(st.st_size) != bytes) {
    *err = "segment size does not match the handshake";
    return false;
  }
  return true;
}

void* segment_map(int fd, size_t bytes, std::string* err) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    *err = sys_error("mmap");
    return nullptr;
  }
  return p;
}

void segment_unmap(void* base, size_t bytes) {
  if (base != nullptr) munmap(base, bytes);
}

}  // namespace shmbus
