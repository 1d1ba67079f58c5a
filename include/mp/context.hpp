// Start methods and mp::init (placeholder until the Process work lands: fork only).
#pragma once

namespace mp {

enum class StartMethod { fork, spawn, forkserver };

/// First line of main(): runs a spawned child and never returns there; returns at once in the parent.
inline void init(int /*argc*/, char** /*argv*/) {}

}  // namespace mp
