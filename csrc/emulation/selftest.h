// The emulator's self-tests (selftest.cpp), exposed by module.cpp.
#pragma once

#include <string>
#include <vector>

namespace fastntk {
namespace emu {

std::vector<std::string> selftest_names();

// Launches the named kernel on a fresh buffer of 1024 doubles (-1 each) and
// returns the buffer; throws c10::Error with the emulator's report.
std::vector<double> run_selftest(const std::string& name);

}  // namespace emu
}  // namespace fastntk
