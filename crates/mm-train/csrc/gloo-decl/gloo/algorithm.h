// See README.md: declarations only, enough for c10d's ProcessGroupGloo.hpp.
#pragma once
namespace gloo {
class Algorithm;
}
