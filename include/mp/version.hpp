// mp's version. Public macros elsewhere: MP_REGISTER_PROCESS (process.hpp) and the build switch
// MP_SEPARATE_COMPILATION (detail/config.hpp), which users define, not mp.
#pragma once

#define MP_VERSION_MAJOR 0
#define MP_VERSION_MINOR 1
#define MP_VERSION_PATCH 0
