// Error reporting shared by the library's C entry points: one message per thread, last failure wins.
#pragma once

#include <string>

#include "minfer/minfer_kernels.h"

namespace minfer {

// Records `message` as this thread's last error and returns `status`.
minfer_status fail(minfer_status status, const std::string& message);

// Clears this thread's last error and returns MINFER_OK.
minfer_status ok();

// Python's repr() of a float (shortest round-trip digits), so messages match minfer.patterns.spec.
std::string python_float_repr(double value);

}  // namespace minfer
