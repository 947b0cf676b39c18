// What both fuzz harnesses share: reading typed values from libFuzzer's bytes, and stopping on a
// broken invariant (libFuzzer keeps the input that did it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace fuzz {

[[noreturn]] inline void die(const char* what) {
  std::fprintf(stderr, "invariant broken: %s\n", what);
  std::abort();
}

#define REQUIRE(c)           \
  do {                       \
    if (!(c)) fuzz::die(#c); \
  } while (0)

// The fuzzer's bytes, read front to back; past the end every read is 0.
struct Input {
  const uint8_t* p;
  size_t n;
  bool empty() const { return n == 0; }
  uint8_t u8() {
    if (n == 0) return 0;
    n--;
    return *p++;
  }
  uint16_t u16() { return static_cast<uint16_t>(u8() | (u8() << 8)); }
  uint32_t u32() { return u16() | (static_cast<uint32_t>(u16()) << 16); }
  uint64_t u64() { return u32() | (static_cast<uint64_t>(u32()) << 32); }
  size_t take(void* dst, size_t len) {
    size_t k = len < n ? len : n;
    if (k == 0) return 0;
    std::memcpy(dst, p, k);
    p += k;
    n -= k;
    return k;
  }
  std::string str(size_t max) {
    size_t len = u8() % (max + 1);
    std::string s(len < n ? len : n, '\0');
    take(&s[0], s.size());
    return s;
  }
};

}  // namespace fuzz
