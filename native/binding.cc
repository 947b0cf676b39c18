// The Node-API glue: runs a shmbus::Member on the libuv loop of the Node environment.
// JS runs only from Deliver(), after the member has returned: never inside a member call.
//
// Every fd the member watches gets a uv_poll_t. When to poll and when to park is the
// PollPolicy's (poll_policy.h): while it is hot, a uv_idle_t runs one of its passes on every
// loop iteration (the idle handle makes libuv poll for I/O with a zero timeout, so other I/O
// keeps flowing). Frames and events collected during one pass reach JS in one call:
//   deliver(meta: Int32Array, count: number, extras: any[])
// where meta holds `count` records of 4 int32 (kind, slot, a, b), the kinds as exported in
// `events` (src/native.ts reads them from there):
//   FRAME      slot, a = offset in the current batch Buffer, b = length
//   FRAME_OWN  slot, a = index in extras of its own Buffer
//   UP         slot, a = index in extras of the peer id
//   DOWN       slot, a = index in extras of the peer id
//   ERROR      a = index in extras of the message, b = index of the peer id (or -1)
//   READY      every member present at start() is linked
//   WRITABLE   bytes queued for some peer went down
//   BATCH      a = index in extras of the Buffer that the FRAME records after it point into
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
#include "poll_policy.h"
#include "uv_handle.h"

namespace {

using shmbus::Member;
using shmbus::MemberOptions;
using shmbus::UvHandle;

constexpr size_t kMetaRecords = 1024;
constexpr size_t kBatchBytes = 256 << 10;     // small frames share one Buffer up to this
constexpr size_t kOwnBufferBytes = 16 << 10;  // frames from this size on get a Buffer of their own

// The record kinds, exported as `events` under their JS names: this table is their one source.
#define SHMBUS_EVENTS(X)      \
  X(kFrame, "FRAME", 0)         \
  X(kFrameOwn, "FRAME_OWN", 1)  \
  X(kUp, "UP", 2)               \
  X(kDown, "DOWN", 3)           \
  X(kError, "ERROR", 4)         \
  X(kReady, "READY", 5)         \
  X(kWritable, "WRITABLE", 6)   \
  X(kBatch, "BATCH", 7)

enum EventKind : int32_t {
#define SHMBUS_EVENT_ENUM(kind, name, value) kind = value,
  SHMBUS_EVENTS(SHMBUS_EVENT_ENUM)
#undef SHMBUS_EVENT_ENUM
};

struct Record {
  int32_t kind, slot, a, b;
};

class Bus;

struct Watch {
  UvHandle<uv_poll_t> poll;
  Bus* bus;
  void* tag;
};

class Bus : public Napi::ObjectWrap<Bus>,
            public shmbus::Reactor,
            public shmbus::MemberEvents,
            public shmbus::PollLoop {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Bus",
                       {
                           InstanceMethod<&Bus::Start>("start"),
                           InstanceMethod<&Bus::Send>("send"),
                           InstanceMethod<&Bus::SendBatch>("sendBatch"),
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
    deliver_ = Napi::Persistent(info[1].As<Napi::Function>());
    meta_ = Napi::Persistent(Napi::Int32Array::New(env, kMetaRecords * 4));
    context_ = std::make_unique<Napi::AsyncContext>(env, "shmbus");
    napi_get_uv_event_loop(env, &loop_);
  }

  ~Bus() override { Shutdown(); }

  // ---- Reactor --------------------------------------------------------------------------------

  void watch(int fd, void* tag) override {
    auto w = std::make_unique<Watch>();
    w->bus = this;
    w->tag = tag;
    uv_poll_t* h = w->poll.make(w.get());
    uv_poll_init(loop_, h, fd);
    uv_poll_start(h, UV_READABLE | UV_DISCONNECT, OnPoll);
    bool keeps_alive = fd == member_.doorbell_fd() && ref_;
    if (!keeps_alive) uv_unref(w->poll.base());
    if (fd == member_.doorbell_fd()) bell_ = w.get();
    watches_[tag] = std::move(w);
  }

  void unwatch(int, void* tag) override {
    auto it = watches_.find(tag);
    if (it == watches_.end()) return;
    if (it->second.get() == bell_) bell_ = nullptr;
    watches_.erase(it);  // closes its handle
  }

  // ---- PollLoop -------------------------------------------------------------------------------

  uint64_t now_ns() override { return uv_hrtime(); }
  void start_passes() override { uv_idle_start(idle_.get(), OnIdle); }
  void stop_passes() override { uv_idle_stop(idle_.get()); }
  void yield() override { sched_yield(); }

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

  // start() -> [result, message, pending]: result as exported in `startResults`.
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string err;
    Member::StartResult r = member_.start(options_, &err);
    if (r == Member::kStarted) {
      started_ = true;
      uv_idle_init(loop_, idle_.make(this));
      uv_unref(idle_.base());
      policy_ = std::make_unique<shmbus::PollPolicy>(member_, *this, spin_ns_);
      napi_add_env_cleanup_hook(env, CleanupHook, this);
      policy_->start();
    }
    Napi::Array out = Napi::Array::New(env, 3);
    out.Set(0u, Napi::Number::New(env, r == Member::kGone ? Member::kFailed : r));
    out.Set(1u, Napi::String::New(env, err));
    out.Set(2u, Napi::Number::New(env, static_cast<double>(member_.initial_pending())));
    return out;
  }

  // send(slot, head, body) -> a result as exported in `sendResults`
  Napi::Value Send(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!started_ || closed_) return Napi::Number::New(env, Member::kNoLink);
    if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsTypedArray() || !info[2].IsTypedArray()) {
      Napi::TypeError::New(env, "send(slot, head: Uint8Array, body: Uint8Array)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    uint32_t slot = info[0].As<Napi::Number>().Uint32Value();
    Napi::Uint8Array head = info[1].As<Napi::Uint8Array>();
    Napi::Uint8Array body = info[2].As<Napi::Uint8Array>();
    shmbus::Part parts[2] = {{head.Data(), head.ByteLength()}, {body.Data(), body.ByteLength()}};
    Member::SendResult r = member_.send(slot, parts, 2, parts[0].len + parts[1].len);
    policy_->sent(r == Member::kBroken);
    return Napi::Number::New(env, r);
  }

  // sendBatch(bytes: Uint8Array, meta: Int32Array, count): frame i is bytes[meta[2i+1] ..
  // meta[2i+1] + meta[2i+2]) to slot meta[2i] (records of 3 int32: slot, offset, length). One
  // crossing for what one turn of the JS loop sent; the results are not reported (a broken
  // link reports itself on the next pass, as after send()).
  Napi::Value SendBatch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!started_ || closed_) return env.Undefined();
    if (info.Length() < 3 || !info[0].IsTypedArray() || !info[1].IsTypedArray() || !info[2].IsNumber()) {
      Napi::TypeError::New(env, "sendBatch(bytes: Uint8Array, meta: Int32Array, count)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Uint8Array bytes = info[0].As<Napi::Uint8Array>();
    Napi::Int32Array meta = info[1].As<Napi::Int32Array>();
    const size_t count = info[2].As<Napi::Number>().Uint32Value();
    if (count * 3 > meta.ElementLength()) {
      Napi::RangeError::New(env, "sendBatch: count past meta").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    const uint8_t* data = bytes.Data();
    const size_t size = bytes.ByteLength();
    const int32_t* m = meta.Data();
    bool sent = false, broken = false;
    for (size_t i = 0; i < count; i++, m += 3) {
      const size_t off = static_cast<uint32_t>(m[1]), len = static_cast<uint32_t>(m[2]);
      if (off > size || len > size - off) continue;
      shmbus::Part part = {data + off, len};
      Member::SendResult r = member_.send(static_cast<uint32_t>(m[0]), &part, 1, len);
      if (r == Member::kBroken) broken = true;
      else sent = true;
    }
    if (sent) policy_->sent(false);
    if (broken) policy_->sent(true);
    return env.Undefined();
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
    if (bell_ != nullptr) uv_ref(bell_->poll.base());
    return info.Env().Undefined();
  }

  Napi::Value Unref(const Napi::CallbackInfo& info) {
    ref_ = false;
    if (bell_ != nullptr) uv_unref(bell_->poll.base());
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
    self->policy_->woken(bell);
    self->Deliver();
  }

  static void OnIdle(uv_idle_t* idle) {
    Bus* self = static_cast<Bus*>(idle->data);
    if (self->closed_) return;
    Napi::HandleScope scope(self->Env());
    self->policy_->pass_begin();
    self->Deliver();
    if (!self->closed_) self->policy_->pass_end();
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
      policy_->stop();
      member_.close();
      idle_.reset();
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
  UvHandle<uv_idle_t> idle_;
  Watch* bell_ = nullptr;
  std::unordered_map<void*, std::unique_ptr<Watch>> watches_;
  Napi::FunctionReference deliver_;
  Napi::Reference<Napi::Int32Array> meta_;
  std::unique_ptr<Napi::AsyncContext> context_;
  uint64_t spin_ns_ = 0;
  std::unique_ptr<shmbus::PollPolicy> policy_;  // once started
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
  Napi::Object events = Napi::Object::New(env);
#define SHMBUS_EVENT_EXPORT(kind, name, value) events.Set(name, Napi::Number::New(env, kind));
  SHMBUS_EVENTS(SHMBUS_EVENT_EXPORT)
#undef SHMBUS_EVENT_EXPORT
  exports.Set("events", events);
  Napi::Object start = Napi::Object::New(env);
  start.Set("STARTED", Napi::Number::New(env, Member::kStarted));
  start.Set("DUPLICATE_ID", Napi::Number::New(env, Member::kDuplicate));
  start.Set("FAILED", Napi::Number::New(env, Member::kFailed));
  exports.Set("startResults", start);
  Napi::Object send = Napi::Object::New(env);
  send.Set("SENT", Napi::Number::New(env, Member::kSent));
  send.Set("QUEUED", Napi::Number::New(env, Member::kQueued));
  send.Set("NO_LINK", Napi::Number::New(env, Member::kNoLink));
  send.Set("BROKEN", Napi::Number::New(env, Member::kBroken));
  exports.Set("sendResults", send);
  return exports;
}

}  // namespace

NODE_API_MODULE(shmbus, Init)
