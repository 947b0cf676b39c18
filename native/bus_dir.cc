#include "bus_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>

#include "handshake.h"

namespace shmbus {

namespace {

std::string sys_error(const std::string& what) { return what + ": " + std::strerror(errno); }

bool socket_address(int dirfd, const std::string& id, struct sockaddr_un* sa, socklen_t* len) {
  std::memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  int n = std::snprintf(sa->sun_path, sizeof sa->sun_path, "/proc/self/fd/%d/%s.sock", dirfd,
                        id.c_str());
  if (n < 0 || static_cast<size_t>(n) >= sizeof sa->sun_path) return false;
  *len = static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + n + 1);
  return true;
}

}  // namespace

int busdir_open(const char* path, std::string* err) {
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    *err = errno == ELOOP || errno == ENOTDIR
               ? std::string("bus directory ") + path + " is a symlink or not a directory"
               : sys_error(std::string("open ") + path);
    return -1;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    *err = sys_error("fstat bus directory");
    close(fd);
    return -1;
  }
  if (st.st_uid != geteuid()) {
    *err = std::string("bus directory ") + path + " is owned by uid " + std::to_string(st.st_uid) +
           ", not by this user";
    close(fd);
    return -1;
  }
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%o", st.st_mode & 0777);
    *err = std::string("bus directory ") + path + " has mode " + mode + "; it must be 0700";
    close(fd);
    return -1;
  }
  return fd;
}

int busdir_lock(int dirfd, const std::string& id, bool* busy, std::string* err) {
  *busy = false;
  std::string name = id + ".lock";
  // Lock files are removed by whoever holds them last (busdir_release, busdir_reap), so the
  // file we locked may have been unlinked meanwhile: only a lock on the file the name points to
  // now counts.
  for (int attempt = 0; attempt < 16; attempt++) {
    int fd = openat(dirfd, name.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
      *err = sys_error("open " + name);
      return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
      if (errno == EWOULDBLOCK) *busy = true;
      else *err = sys_error("flock " + name);
      close(fd);
      return -1;
    }
    struct stat locked, named;
    if (fstat(fd, &locked) == 0 && fstatat(dirfd, name.c_str(), &named, AT_SYMLINK_NOFOLLOW) == 0 &&
        locked.st_ino == named.st_ino && locked.st_dev == named.st_dev) {
      return fd;
    }
    close(fd);
  }
  *err = "lock file " + name + " keeps being replaced";
  return -1;
}

void busdir_release(int dirfd, const std::string& id, int lock_fd) {
  std::string name = id + ".lock";
  unlinkat(dirfd, name.c_str(), 0);
  close(lock_fd);
}

bool busdir_listening(int dirfd, const std::string& id) {
  int error_number = 0;
  int fd = busdir_connect(dirfd, id, &error_number);
  if (fd < 0) return false;
  close(fd);
  return true;
}

int busdir_listen(int dirfd, const std::string& id, std::string* err) {
  std::string name = id + ".sock";
  if (unlinkat(dirfd, name.c_str(), 0) != 0 && errno != ENOENT) {
    *err = sys_error("remove stale " + name);
    return -1;
  }
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *err = sys_error("socket");
    return -1;
  }
  struct sockaddr_un sa;
  socklen_t len;
  if (!socket_address(dirfd, id, &sa, &len)) {
    *err = "socket path too long";
    close(fd);
    return -1;
  }
  if (bind(fd, reinterpret_cast<struct sockaddr*>(&sa), len) != 0) {
    *err = sys_error("bind " + name);
    close(fd);
    return -1;
  }
  // As deep a backlog as the system allows: a member that many join at once accepts them a
  // loop iteration later, and a connect that finds the backlog full is retried.
  if (listen(fd, SOMAXCONN) != 0) {
    *err = sys_error("listen " + name);
    close(fd);
    unlinkat(dirfd, name.c_str(), 0);
    return -1;
  }
  return fd;
}

std::vector<std::string> busdir_list(int dirfd, const char* suffix) {
  std::vector<std::string> ids;
  int fd = dup(dirfd);
  if (fd < 0) return ids;
  DIR* d = fdopendir(fd);
  if (d == nullptr) {
    close(fd);
    return ids;
  }
  rewinddir(d);
  while (struct dirent* e = readdir(d)) {
    std::string name = e->d_name;
    const size_t n = std::strlen(suffix);
    if (name.size() <= n || name.compare(name.size() - n, n, suffix) != 0) continue;
    std::string id = name.substr(0, name.size() - n);
    if (id_valid(id)) ids.push_back(id);
  }
  closedir(d);
  return ids;
}

int busdir_connect(int dirfd, const std::string& id, int* error_number) {
  struct sockaddr_un sa;
  socklen_t len;
  if (!socket_address(dirfd, id, &sa, &len)) {
    *error_number = ENAMETOOLONG;
    return -1;
  }
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *error_number = errno;
    return -1;
  }
  // A Unix connect completes at once or, on a non-blocking socket whose listener's backlog is
  // full, fails with EAGAIN (the caller retries): it never blocks the loop.
  int r;
  do r = connect(fd, reinterpret_cast<struct sockaddr*>(&sa), len);
  while (r != 0 && errno == EINTR);
  if (r != 0) {
    *error_number = errno;
    close(fd);
    return -1;
  }
  return fd;
}

int busdir_reap(int dirfd, const std::string& id) {
  bool busy;
  std::string err;
  int lock = busdir_lock(dirfd, id, &busy, &err);
  if (lock < 0) return busy ? -1 : 0;
  std::string name = id + ".sock";
  int r = unlinkat(dirfd, name.c_str(), 0) == 0 ? 1 : 0;
  busdir_release(dirfd, id, lock);
  return r;
}

bool busdir_sweep(const char* path) {
  std::string err;
  int dirfd = busdir_open(path, &err);
  if (dirfd < 0) return false;
  std::vector<std::string> ids = busdir_list(dirfd, ".lock");
  for (const std::string& id : busdir_list(dirfd)) ids.push_back(id);
  bool held = false;
  for (const std::string& id : ids) {
    if (busdir_reap(dirfd, id) < 0) {
      held = true;
      break;
    }
  }
  close(dirfd);
  return !held && rmdir(path) == 0;
}

void busdir_unlink(int dirfd, const std::string& id) {
  std::string name = id + ".sock";
  unlinkat(dirfd, name.c_str(), 0);
}

}  // namespace shmbus
