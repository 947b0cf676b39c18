// The Node-API glue: runs a shmbus::Member on the libuv loop of the Node environment.
// JS runs only from Deliver(), after the member has returned: never inside a member call.
//
// Every fd the member watches gets a uv_poll_t. While traffic is recent a uv_idle_t polls the
// rings on every loop iteration (the idle handle makes libuv poll for I/O with a zero timeout,
// so other I/O keeps flowing), yielding the CPU on each empty pass (the peer we wait for may be
// waiting for this very CPU: measured on 2 busy cores, p50 round trip 38-75 µs with the yield,
// 132-148 µs without); a pass that finds nothing first watches the rings for up to 5 µs, so a
// reply is seen as it lands rather than a loop iteration later. After `spinUs` of quiet the
// member parks and sleeps on its doorbell. Frames and events collected during one pass reach JS
// in one call:
//   deliver(meta: Int32Array, count: number, extras: any[])
// where meta holds `count` records of 4 int32 (kind, slot, a, b):
//   0 FRAME  slot, a = offset in the current batch Buffer, b = length
//   1 FRAME  slot, a = index in extras of its own Buffer
//   2 UP     slot, a = index in extras of the peer id
//   3 DOWN   slot, a = index in extras of the peer id
//   4 ERROR  a = index in extras of the message, b = index of the peer id (or -1)
//   5 READY  every member present at start() is linked
//   6 WRITABLE  bytes queued for some peer went down
//   7 BATCH  a = index in extras of the Buffer that the FRAME records after it point into
#include <napi.h>
#include <uv.h>

#include <sched.h>

#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "bus_dir.h"
#include "floor.h"
#include "handshake.h"
#include "member.h"

namespace {

using shmbus::Member;
using shmbus::MemberOptions;

constexpr size_t kMetaRecords = 1024;
constexpr size_t kBatchBytes = 256 << 10;     // small frames share one Buffer up to this
constexpr size_t kOwnBufferBytes = 16 << 10;  // frames from this size on get a Buffer of their own
// How long a polling pass watches the rings before going round the loop again, at most.
constexpr uint64_t kBusyWaitNs = 5000;

enum EventKind : int32_t {
  kFrame = 0,
  kFrameOwn = 1,
  kUp = 2,
  kDown = 3,
  kError = 4,
  kReady = 5,
  kWritable = 6,
  kBatch = 7,
};

struct Record {
  int32_t kind, slot, a, b;
};

class Bus;

struct Watch {
  uv_poll_t handle;
  Bus* bus;
  void* tag;
};

class Bus : public Napi::ObjectWrap<Bus>, public shmbus::Reactor, public shmbus::MemberEvents {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Bus",
                       {
                           InstanceMethod<&Bus::Start>("start"),
                           InstanceMethod<&Bus::Send>("send"),
                           InstanceMethod<&Bus::Queued>("queued"),
                           InstanceMethod<&Bus::Reap>("reap"),
                           InstanceMethod<&Bus::Ref>("ref"),
                           InstanceMethod<&Bus::Unref>("unref"),
                           InstanceMethod<&Bus::Close>("close"),
                       });
  }

  // new Bus({ dir, id, ringSize, spinUs, maxMessageSize, notifyBytes }, deliver)
  Bus(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Bus>(info), member_(*this, *this) {  // NOLINT
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction()) {
      Napi::TypeError::New(env, "Bus(options, deliver)").ThrowAsJavaScriptException();
      return;
    }
    Napi::Object o = info[0].As<Napi::Object>();
    options_.dir = o.Get("dir").ToString().Utf8Value();
    options_.id = o.Get("id").ToString().Utf8Value();
    options_.ring_capacity = static_cast<size_t>(o.Get("ringSize").ToNumber().Int64Value());
    options_.max_message = static_cast<size_t>(o.Get("maxMessageSize").ToNumber().Int64Value());
    options_.notify_bytes = static_cast<uint64_t>(o.Get("notifyBytes").ToNumber().Int64Value());
    spin_ns_ = static_cast<uint64_t>(o.Get("spinUs").ToNumber().Int64Value()) * 1000;
    busy_wait_ns_ = spin_ns_ < kBusyWaitNs ? spin_ns_ : kBusyWaitNs;
    deliver_ = Napi::Persistent(info[1].As<Napi::Function>());
    meta_ = Napi::Persistent(Napi::Int32Array::New(env, kMetaRecords * 4));
    context_ = std::make_unique<Napi::AsyncContext>(env, "shmbus");
    napi_get_uv_event_loop(env, &loop_);
  }

  ~Bus() override { Shutdown(); }

  // ---- Reactor --------------------------------------------------------------------------------

  void watch(int fd, void* tag) override {
    auto* w = new Watch;
    w->bus = this;
    w->tag = tag;
    w->handle.data = w;
    uv_poll_init(loop_, &w->handle, fd);
    uv_poll_start(&w->handle, UV_READABLE | UV_DISCONNECT, OnPoll);
    bool keeps_alive = fd == member_.doorbell_fd() && ref_;
    if (!keeps_alive) uv_unref(reinterpret_cast<uv_handle_t*>(&w->handle));
    if (fd == member_.doorbell_fd()) bell_ = w;
    watches_[tag] = w;
  }

  void unwatch(int, void* tag) override {
    auto it = watches_.find(tag);
    if (it == watches_.end()) return;
    Watch* w = it->second;
    watches_.erase(it);
    if (w == bell_) bell_ = nullptr;
    uv_poll_stop(&w->handle);
    uv_close(reinterpret_cast<uv_handle_t*>(&w->handle),
             [](uv_handle_t* h) { delete static_cast<Watch*>(h->data); });
  }

  // ---- MemberEvents ---------------------------------------------------------------------------

  void link_up(uint32_t slot, const std::string& id) override {
    records_.push_back({kUp, static_cast<int32_t>(slot), Extra(id), 0});
  }
  void link_down(uint32_t slot, const std::string& id) override {
    records_.push_back({kDown, static_cast<int32_t>(slot), Extra(id), 0});
  }
  void ready() override { records_.push_back({kReady, 0, 0, 0}); }
  void error(const std::string& id, const std::string& message) override {
    int32_t m = Extra(message);
    records_.push_back({kError, 0, m, id.empty() ? -1 : Extra(id)});
  }
  void writable() override { records_.push_back({kWritable, 0, 0, 0}); }

  void message(uint32_t slot, const uint8_t* data, size_t len) override {
    if (len >= kOwnBufferBytes) {
      Napi::Buffer<uint8_t> b = Napi::Buffer<uint8_t>::Copy(Env(), data, len);
      if (Env().IsExceptionPending()) {
        Env().GetAndClearPendingException();
        error("", "out of memory for a message of " + std::to_string(len) + " bytes");
        return;
      }
      records_.push_back({kFrameOwn, static_cast<int32_t>(slot), Extra(b), 0});
      return;
    }
    if (batch_.size() + len > kBatchBytes) SealBatch();
    if (batch_extra_ < 0) {
      batch_extra_ = Extra(std::string());  // filled in by SealBatch()
      records_.push_back({kBatch, 0, batch_extra_, 0});
    }
    records_.push_back({kFrame, static_cast<int32_t>(slot),
                        static_cast<int32_t>(batch_.size()), static_cast<int32_t>(len)});
    batch_.insert(batch_.end(), data, data + len);
  }

  uint8_t* begin_large(uint32_t slot, size_t total) override {
    Napi::Buffer<uint8_t> b = Napi::Buffer<uint8_t>::New(Env(), total);
    if (Env().IsExceptionPending()) {
      Env().GetAndClearPendingException();
      return nullptr;
    }
    large_[slot] = Napi::Persistent(static_cast<Napi::Value>(b));
    return b.Data();
  }
  void end_large(uint32_t slot) override {
    auto it = large_.find(slot);
    if (it == large_.end()) return;
    Napi::Value b = it->second.Value();
    large_.erase(it);
    records_.push_back({kFrameOwn, static_cast<int32_t>(slot), Extra(b), 0});
  }
  void drop_large(uint32_t slot) override { large_.erase(slot); }

 private:
  // ---- JS methods -----------------------------------------------------------------------------

  // start() -> [result, message, pending]: result 0 started, 1 duplicate id, 2 failed.
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string err;
    Member::StartResult r = member_.start(options_, &err);
    if (r == Member::kStarted) {
      started_ = true;
      idle_ = new uv_idle_t;
      uv_idle_init(loop_, idle_);
      uv_unref(reinterpret_cast<uv_handle_t*>(idle_));
      napi_add_env_cleanup_hook(env, CleanupHook, this);
      Park();
    }
    Napi::Array out = Napi::Array::New(env, 3);
    out.Set(0u, Napi::Number::New(env, r == Member::kStarted ? 0 : r == Member::kDuplicate ? 1 : 2));
    out.Set(1u, Napi::String::New(env, err));
    out.Set(2u, Napi::Number::New(env, static_cast<double>(member_.initial_pending())));
    return out;
  }

  // send(slot, head, body) -> 0 sent, 1 queued outside the ring, 2 no such link, 3 link broken
  Napi::Value Send(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!started_) return Napi::Number::New(env, 2);
    if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsTypedArray() || !info[2].IsTypedArray()) {
      Napi::TypeError::New(env, "send(slot, head: Uint8Array, body: Uint8Array)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    uint32_t slot = info[0].As<Napi::Number>().Uint32Value();
    Napi::Uint8Array head = info[1].As<Napi::Uint8Array>();
    Napi::Uint8Array body = info[2].As<Napi::Uint8Array>();
    shmbus::Part parts[2] = {{head.Data(), head.ByteLength()}, {body.Data(), body.ByteLength()}};
    Member::SendResult r = member_.send(slot, parts, 2, parts[0].len + parts[1].len);
    // A reply is likely to follow: watch the rings closely for a while. A broken link is
    // closed (and reported) by the next pass, which must come soon even when never spinning.
    if (r == Member::kBroken) Kick();
    else GoHot();
    return Napi::Number::New(env, r);
  }

  Napi::Value Queued(const Napi::CallbackInfo& info) {
    if (info.Length() < 1 || !info[0].IsNumber()) return Napi::Number::New(info.Env(), 0);
    uint32_t slot = info[0].As<Napi::Number>().Uint32Value();
    return Napi::Number::New(info.Env(), static_cast<double>(member_.queued(slot)));
  }

  Napi::Value Reap(const Napi::CallbackInfo& info) {
    std::string id = info[0].ToString().Utf8Value();
    return Napi::Number::New(info.Env(), member_.reap(id));
  }

  Napi::Value Ref(const Napi::CallbackInfo& info) {
    ref_ = true;
    if (bell_ != nullptr) uv_ref(reinterpret_cast<uv_handle_t*>(&bell_->handle));
    return info.Env().Undefined();
  }

  Napi::Value Unref(const Napi::CallbackInfo& info) {
    ref_ = false;
    if (bell_ != nullptr) uv_unref(reinterpret_cast<uv_handle_t*>(&bell_->handle));
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Shutdown();
    return info.Env().Undefined();
  }

  // ---- loop side ------------------------------------------------------------------------------

  static void OnPoll(uv_poll_t* handle, int, int) {
    Watch* w = static_cast<Watch*>(handle->data);
    Bus* self = w->bus;
    if (self->closed_) return;
    Napi::HandleScope scope(self->Env());
    bool bell = w == self->bell_;
    self->member_.on_readable(w->tag);
    if (bell) self->GoHot();
    // Whatever woke us, a parked member goes back to sleep with every ring's flag set: a link
    // that came up, or a producer that rang and cleared its flag, must not leave one unset.
    if (!self->hot_) self->Park();
    self->Deliver();
  }

  static void OnIdle(uv_idle_t* idle) {
    Bus* self = static_cast<Bus*>(idle->data);
    if (self->closed_) return;
    Napi::HandleScope scope(self->Env());
    bool moved = self->member_.poll();
    uint64_t now = uv_hrtime();
    // Nothing yet: watch the rings for a few µs before going round the loop (a loop iteration
    // costs more than that), so a reply is seen as it lands rather than an iteration later.
    if (!moved && self->hot_ && self->busy_wait_ns_ > 0) {
      const uint64_t until = now + self->busy_wait_ns_;
      do {
        if (self->member_.has_data()) {
          moved = self->member_.poll();
          break;
        }
        now = uv_hrtime();
      } while (now < until);
    }
    if (moved || self->active_) self->last_ns_ = now;
    self->active_ = false;
    self->Deliver();
    if (self->closed_ || !self->hot_) return;
    // Polling on 2 cores: the peer we wait for may be runnable on this very CPU. Let it run.
    if (!moved) sched_yield();
    if (!moved && now - self->last_ns_ >= self->spin_ns_) {
      if (self->member_.park()) {
        self->hot_ = false;
        uv_idle_stop(self->idle_);
      } else {
        self->last_ns_ = now;
      }
    }
  }

  void GoHot() {
    if (spin_ns_ == 0 || closed_ || !started_) return;
    if (hot_) {
      active_ = true;  // OnIdle takes the time: no clock read per send
      return;
    }
    last_ns_ = uv_hrtime();
    hot_ = true;
    member_.unpark();
    idle_->data = this;
    uv_idle_start(idle_, OnIdle);
  }

  // One polling pass on the next loop iteration, then back to the usual rhythm.
  void Kick() {
    if (closed_ || !started_ || hot_) return;
    hot_ = true;
    last_ns_ = uv_hrtime();
    member_.unpark();
    idle_->data = this;
    uv_idle_start(idle_, OnIdle);
  }

  // Sleep on the doorbell; what came while we were getting ready is read first.
  void Park() {
    if (hot_) return;
    while (!member_.park()) member_.poll();
  }

  int32_t Extra(const std::string& s) {
    extras_.push_back({s, Napi::Reference<Napi::Value>()});
    return static_cast<int32_t>(extras_.size() - 1);
  }
  int32_t Extra(Napi::Value v) {
    extras_.push_back({std::string(), Napi::Persistent(v)});
    return static_cast<int32_t>(extras_.size() - 1);
  }

  // Turns the small frames gathered so far into one Buffer (no JS runs here).
  void SealBatch() {
    if (batch_extra_ < 0) return;
    Napi::Buffer<uint8_t> b = Napi::Buffer<uint8_t>::Copy(Env(), batch_.data(), batch_.size());
    extras_[batch_extra_].second = Napi::Persistent(static_cast<Napi::Value>(b));
    batch_.clear();
    batch_extra_ = -1;
  }

  void Deliver() {
    if (records_.empty() || closed_) return;
    Napi::Env env = Env();
    SealBatch();
    std::vector<Record> records;
    records.swap(records_);
    std::vector<std::pair<std::string, Napi::Reference<Napi::Value>>> extras;
    extras.swap(extras_);
    Napi::Value extras_js = env.Undefined();
    if (!extras.empty()) {
      Napi::Array a = Napi::Array::New(env, extras.size());
      for (size_t i = 0; i < extras.size(); i++) {
        if (extras[i].second.IsEmpty()) a.Set(i, Napi::String::New(env, extras[i].first));
        else a.Set(i, extras[i].second.Value());
      }
      extras_js = a;
    }
    Napi::Int32Array meta = meta_.Value();
    for (size_t i = 0; i < records.size() && !closed_; i += kMetaRecords) {
      size_t n = records.size() - i < kMetaRecords ? records.size() - i : kMetaRecords;
      std::memcpy(meta.Data(), &records[i], n * sizeof(Record));
      deliver_.MakeCallback(Value(), {meta, Napi::Number::New(env, double(n)), extras_js},
                            *context_);
      if (env.IsExceptionPending()) {
        Napi::Error e = env.GetAndClearPendingException();
        napi_fatal_exception(env, e.Value());
      }
    }
  }

  void Shutdown() {
    if (closed_) return;
    closed_ = true;
    if (started_) {
      member_.close();
      if (idle_ != nullptr) {
        uv_idle_stop(idle_);
        uv_close(reinterpret_cast<uv_handle_t*>(idle_),
                 [](uv_handle_t* h) { delete reinterpret_cast<uv_idle_t*>(h); });
        idle_ = nullptr;
      }
      napi_remove_env_cleanup_hook(Env(), CleanupHook, this);
    }
    large_.clear();
    records_.clear();
    extras_.clear();
    batch_.clear();
    batch_extra_ = -1;
  }

  static void CleanupHook(void* arg) { static_cast<Bus*>(arg)->Shutdown(); }

  MemberOptions options_;
  uv_loop_t* loop_ = nullptr;
  uv_idle_t* idle_ = nullptr;
  Watch* bell_ = nullptr;
  std::unordered_map<void*, Watch*> watches_;
  Napi::FunctionReference deliver_;
  Napi::Reference<Napi::Int32Array> meta_;
  std::unique_ptr<Napi::AsyncContext> context_;
  uint64_t spin_ns_ = 0;
  // kBusyWaitNs, or the polling window if shorter. Measured on 2 cores, 64 B ping-pong p50:
  // 10-12 µs without it, 7.3-7.4 µs with 5 µs, no better with 20 µs (and throughput fell).
  uint64_t busy_wait_ns_ = 0;
  uint64_t last_ns_ = 0;
  bool hot_ = false;
  bool active_ = false;  // sent something since the last polling pass
  bool ref_ = true;
  bool started_ = false;
  bool closed_ = false;
  std::vector<Record> records_;
  std::vector<std::pair<std::string, Napi::Reference<Napi::Value>>> extras_;
  std::vector<uint8_t> batch_;
  int32_t batch_extra_ = -1;  // extras_ index of the Buffer batch_ will become
  std::unordered_map<uint32_t, Napi::Reference<Napi::Value>> large_;
  Member member_;  // last: destroyed first, while what it calls back into still exists
};

// sweep(path) -> whether the bus directory at path, whose members had all died, is gone.
Napi::Value Sweep(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsString()) return Napi::Boolean::New(info.Env(), false);
  return Napi::Boolean::New(info.Env(), shmbus::busdir_sweep(info[0].As<Napi::String>().Utf8Value().c_str()));
}

// floor({ role: 'drive' | 'serve', dir, id, peer, ringSize, maxMessageSize, maxQueueBytes,
//         payloads, warmupMs, rttMs, tpMs }, onResult) -> '' when done, else what failed.
// Blocks the calling thread for the whole run (see floor.h): for a process of its own.
Napi::Value Floor(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction()) {
    Napi::TypeError::New(env, "floor(options, onResult)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object o = info[0].As<Napi::Object>();
  Napi::Function on_result = info[1].As<Napi::Function>();
  auto num = [&](const char* key) { return o.Get(key).ToNumber().Int64Value(); };
  shmbus::FloorOptions options;
  options.dir = o.Get("dir").ToString().Utf8Value();
  options.id = o.Get("id").ToString().Utf8Value();
  options.peer_id = o.Get("peer").ToString().Utf8Value();
  options.ring_capacity = static_cast<size_t>(num("ringSize"));
  options.max_message = static_cast<size_t>(num("maxMessageSize"));
  options.max_queue = static_cast<uint64_t>(num("maxQueueBytes"));
  std::string err;
  bool ok;
  if (o.Get("role").ToString().Utf8Value() == "serve") {
    ok = shmbus::floor_serve(options, &err);
  } else {
    shmbus::FloorPlan plan;
    Napi::Array payloads = o.Get("payloads").As<Napi::Array>();
    for (uint32_t i = 0; i < payloads.Length(); i++)
      plan.payloads.push_back(static_cast<size_t>(payloads.Get(i).ToNumber().Int64Value()));
    plan.warmup_ns = static_cast<uint64_t>(num("warmupMs")) * 1'000'000;
    plan.rtt_ns = static_cast<uint64_t>(num("rttMs")) * 1'000'000;
    plan.tp_ns = static_cast<uint64_t>(num("tpMs")) * 1'000'000;
    ok = shmbus::floor_drive(options, plan, [&](const shmbus::FloorResult& r) {
      Napi::HandleScope scope(env);
      Napi::Object x = Napi::Object::New(env);
      x.Set("payload", double(r.payload));
      x.Set("p50", double(r.p50));
      x.Set("p99", double(r.p99));
      x.Set("p999", double(r.p999));
      x.Set("max", double(r.max));
      x.Set("count", double(r.count));
      x.Set("msgs", double(r.msgs));
      x.Set("seconds", r.seconds);
      x.Set("rttCpuMs", r.rtt_cpu_ms);
      x.Set("tpCpuMs", r.tp_cpu_ms);
      on_result.Call({x});
    }, &err);
  }
  return Napi::String::New(env, ok ? std::string() : err.empty() ? std::string("failed") : err);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("floor", Napi::Function::New(env, Floor, "floor"));
  exports.Set("Bus", Bus::Init(env));
  exports.Set("sweep", Napi::Function::New(env, Sweep, "sweep"));
  exports.Set("protocolVersion", Napi::Number::New(env, shmbus::kProtocolVersion));
  return exports;
}

}  // namespace

NODE_API_MODULE(shmbus, Init)
