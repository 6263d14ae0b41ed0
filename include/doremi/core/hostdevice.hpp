#pragma once
// DOREMI_HD marks functions both backends share: plain inline C++ under g++,
// __host__ __device__ under nvcc, so elementwise math is written once.
#if defined(__CUDACC__)
#define DOREMI_HD __host__ __device__ inline
#else
#define DOREMI_HD inline
#endif
