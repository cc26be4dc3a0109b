// See README.md: declarations only, enough for c10d's ProcessGroupGloo.hpp.
#pragma once
namespace gloo {
namespace transport {
class Device;
class UnboundBuffer;
} // namespace transport
} // namespace gloo
