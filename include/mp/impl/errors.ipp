// errors: definitions (see errors.hpp): the registry behind register_exception lives in detail/remote_error.
#pragma once

#include <mp/detail/remote_error.hpp>
