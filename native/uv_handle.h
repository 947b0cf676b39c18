// A libuv handle on the heap, owned: closed through uv_close() when its owner lets it go, and
// freed in the close callback (libuv may still touch it until then). zeromq.js's UvHandle is the
// model.
#pragma once

#include <uv.h>

namespace shmbus {

template <typename T>
class UvHandle {
 public:
  UvHandle() = default;
  ~UvHandle() { reset(); }
  UvHandle(const UvHandle&) = delete;
  UvHandle& operator=(const UvHandle&) = delete;

  // A new handle, not yet initialised (uv_*_init(loop, get()) comes next); data set to `data`.
  T* make(void* data) {
    reset();
    h_ = new T;
    h_->data = data;
    return h_;
  }
  T* get() const { return h_; }
  uv_handle_t* base() const { return reinterpret_cast<uv_handle_t*>(h_); }
  explicit operator bool() const { return h_ != nullptr; }

  void reset() {
    if (h_ == nullptr) return;
    uv_close(base(), [](uv_handle_t* h) { delete reinterpret_cast<T*>(h); });
    h_ = nullptr;
  }

 private:
  T* h_ = nullptr;
};

}  // namespace shmbus
