# The library's dependencies, all from Debian's packages. Shared by the build
# tree and by the installed package config so both resolve them the same way.
include(CMakeFindDependencyMacro)
find_dependency(Eigen3 3.4 NO_MODULE)
find_dependency(fmt)
find_dependency(nlohmann_json 3.10)
find_dependency(OpenMP)
find_dependency(Threads)
find_dependency(zstd)
