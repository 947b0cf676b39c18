{
  "targets": [
    {
      "target_name": "shmbus",
      "sources": [
        "native/binding.cc",
        "native/bus_dir.cc",
        "native/doorbell.cc",
        "native/floor.cc",
        "native/handshake.cc",
        "native/member.cc",
        "native/poll_policy.cc",
        "native/ring.cc",
        "native/segment.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      # NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS: in a worker thread being terminated, JS stops
      # being runnable at any moment, and node-addon-api would make the Node-API calls that then
      # fail a fatal error of the whole process; with it they fail quietly.
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags": ["-O2", "-fstack-protector-strong", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "cflags_cc": ["-std=c++17", "-fno-exceptions", "-D_FORTIFY_SOURCE=2"],
      "ldflags": ["-Wl,-z,relro,-z,now"],
      "conditions": [
        ["OS!='linux'", {"sources!": []}]
      ]
    }
  ]
}
