// An uncaught C++ exception: std::terminate, then abort().
// argv[1] "std" throws std::runtime_error("disk full"); "custom" throws a ConfigError.
#include <cstring>
#include <stdexcept>

namespace app {
struct ConfigError {
    int line;
    const char *key;
};
}  // namespace app

__attribute__((noinline, noipa)) void load_config(const char *which) {
    if (std::strcmp(which, "custom") == 0)
        throw app::ConfigError{12, "port"};
    throw std::runtime_error("disk full");
}

int main(int argc, char **argv) {
    load_config(argc > 1 ? argv[1] : "std");
    return 0;
}
