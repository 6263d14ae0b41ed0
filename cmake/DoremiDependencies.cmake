# The library's dependencies, all from Debian's packages. Shared by the build
# tree and by the installed package config so both resolve them the same way.
include(CMakeFindDependencyMacro)
find_dependency(Eigen3 3.4 NO_MODULE)
find_dependency(fmt)
find_dependency(nlohmann_json 3.10)
find_dependency(OpenMP)
find_dependency(Threads)
find_dependency(zstd)

# OpenBLAS, OpenMP build (Debian: libopenblas-openmp-dev). When found, Eigen's
# matrix products go to its sgemm/dgemm (EIGEN_USE_BLAS): on the CPUs measured
# here they run the LM-head shapes at ~95 % of the fp32 peak against ~70 % for
# Eigen's own kernel. The OpenMP build is required: it shares the program's
# OpenMP threads and runs single-threaded inside our parallel regions.
if(NOT DEFINED DOREMI_BLAS OR DOREMI_BLAS)
  find_library(DOREMI_OPENBLAS_LIBRARY NAMES openblas
    PATHS /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp NO_DEFAULT_PATH)
endif()
# oneDNN (Debian: libdnnl-dev), optional: the CPU backend's fp32 and bf16
# GEMMs (see include/doremi/backend/cpu/gemm.hpp); Eigen otherwise.
if(NOT DEFINED DOREMI_ONEDNN OR DOREMI_ONEDNN)
  find_package(dnnl QUIET CONFIG)
endif()
# utf8proc (Debian: libutf8proc-dev) has no CMake package: Unicode categories
# and NFC for the BPE tokenizers.
find_path(DOREMI_UTF8PROC_INCLUDE_DIR utf8proc.h)
find_library(DOREMI_UTF8PROC_LIBRARY NAMES utf8proc)
if(NOT DOREMI_UTF8PROC_INCLUDE_DIR OR NOT DOREMI_UTF8PROC_LIBRARY)
  message(FATAL_ERROR "doremi needs utf8proc (Debian: apt-get install libutf8proc-dev)")
endif()
if(NOT TARGET doremi_deps::utf8proc)
  add_library(doremi_deps::utf8proc UNKNOWN IMPORTED)
  set_target_properties(doremi_deps::utf8proc PROPERTIES
    IMPORTED_LOCATION "${DOREMI_UTF8PROC_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${DOREMI_UTF8PROC_INCLUDE_DIR}")
endif()
