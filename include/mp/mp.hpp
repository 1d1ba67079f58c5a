// mp: Python's multiprocessing for C++20. This umbrella header only includes; each concept has its own header.
#pragma once

#include <mp/version.hpp>
#include <mp/errors.hpp>
#include <mp/serialize.hpp>
#include <mp/context.hpp>
#include <mp/process.hpp>
#include <mp/connection.hpp>
#include <mp/queue.hpp>
#include <mp/shared.hpp>
#include <mp/shared_heap.hpp>
#include <mp/sync.hpp>
#include <mp/pool.hpp>
#include <mp/thread_pool.hpp>
#include <mp/manager.hpp>
