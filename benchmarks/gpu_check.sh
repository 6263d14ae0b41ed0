#!/usr/bin/env bash
# GPU check in one run: builds the CUDA tests and the GPU benchmark, runs the
# tests, then benchmarks the doremi-120m training and DRO steps against a
# PyTorch twin on the same GPU (benchmarks/bench_gpu_step.cu, torch_gpu_twin.py).
# Everything printed goes to the log too; the elapsed time comes last.
#
# usage: benchmarks/gpu_check.sh [options] [-- extra bench_gpu_step arguments]
#   --build-dir DIR   build folder (default build-gpu)
#   --log FILE        log file (default gpu_check.log)
#   --arch ARCHS      CMAKE_CUDA_ARCHITECTURES (default: GPU 0's compute capability
#                     from nvidia-smi, e.g. 90; else native; e.g. 90a, "80;90")
#   --deps DIR        folder of Debian .deb files (the -dev packages below) to unpack
#                     (dpkg -x) into BUILD_DIR/deps-prefix and use as CMAKE_PREFIX_PATH
#                     and include path, for machines without them
#   --python PY       Python with PyTorch for the twin (default python3)
#   --batch N         sequences per step (default 16; context 1024)
#   --steps N         timed steps of each kind (default 20; 3 warm-up steps first)
#   --peak-tflops X   bf16 dense peak for MFU (default 989: H100 SXM / H200)
#   --no-compile      run the twin without torch.compile
#   --skip-tests      build and run the benchmark only
#   --quickstart      also build the `doremi` program and run `doremi quickstart
#                     --device cuda` (the whole pipeline on the GPU; needs libcli11-dev)
#   --jobs N          build parallelism (default nproc)
#   --profile         also profile one training step and one DRO step of ours
#                     with Nsight Compute (ncu: GPU time of every kernel) and
#                     print the time per kernel and per part of the step
#                     (benchmarks/ncu_summary.py), for each attention family
#                     benchmarked; the CSVs go beside the log (LOG without
#                     .log, + .ncu-FAMILY.csv). Then the hardware
#                     counters of both families' attention kernels (one launch
#                     of each: ncu's "full" set, tensor-pipe use): a few
#                     lines each in the log, the whole report beside the log
#                     (LOG without .log, + .attention-ncu.txt)
#   --profile-only    build the benchmark and run the profile only (no tests, no
#                     timed benchmark): a second run after one without --profile,
#                     where one command may not run long enough for both
#
# The benchmark runs twice: with the default tensor-core attention kernels
# (our steps untuned and with GEMM tuning, DOREMI_CUDA_GEMM_TUNING=1, and
# the PyTorch twin; then one layer's attention alone with both kernel
# families beside PyTorch's SDPA, and the mma kernels alone at several
# tilings, AttentionMmaTiles, each compared with the default's outputs), then the steps with
# DOREMI_CUDA_ATTENTION=mma (ours only); set DOREMI_CUDA_ATTENTION yourself to
# run one family only.
#
# Needs nvidia-smi, nvcc (CUDA 12+), cmake >= 3.24, a C++20 host compiler and
# the library's dependencies (Debian: libeigen3-dev libfmt-dev nlohmann-json3-dev
# libzstd-dev libutf8proc-dev doctest-dev). Where those are missing, on a
# machine that has them run
#   mkdir -p debs && (cd debs && apt-get download libeigen3-dev libfmt-dev libfmt9 \
#     nlohmann-json3-dev libzstd-dev libzstd1 libutf8proc-dev libutf8proc2 doctest-dev libcli11-dev)
# and pass --deps debs. Exit status: 0 when the build, the tests and the
# benchmark succeeded (the goals are reported, not enforced). Relative paths
# are taken from the current folder; the build runs in the repository root.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=build-gpu
log=gpu_check.log
arch=
deps=
python=python3
batch=16
steps=20
peak=989
twin_args=
skip_tests=0
quickstart=0
profile=0
bench=1
jobs=$(nproc 2>/dev/null || echo 4)
bench_extra=()

while [[ $# -gt 0 ]]; do
  case $1 in
    --build-dir) build_dir=$2; shift 2 ;;
    --log) log=$2; shift 2 ;;
    --arch) arch=$2; shift 2 ;;
    --deps) deps=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --peak-tflops) peak=$2; shift 2 ;;
    --no-compile) twin_args="--no-compile"; shift ;;
    --skip-tests) skip_tests=1; shift ;;
    --quickstart) quickstart=1; shift ;;
    --profile) profile=1; shift ;;
    --profile-only) profile=1; skip_tests=1; bench=0; shift ;;
    --jobs) jobs=$2; shift 2 ;;
    --) shift; bench_extra=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

# Paths given relative to the current folder; the build runs from the repository root.
absolute() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
build_dir=$(absolute "$build_dir")
log=$(absolute "$log")
[[ -z $deps ]] || deps=$(absolute "$deps")
tests_bin=$build_dir/tests/cuda/doremi_cuda_tests
bench_bin=$build_dir/benchmarks/bench_gpu_step

main() {
  cd "$repo"
  start=$(date +%s)
  status=0
  elapsed() { echo "elapsed: $(( $(date +%s) - start )) s"; }
  die() { echo "gpu_check.sh: $*"; elapsed; exit 1; }  # (main runs in a subshell of the pipeline)
  section() { echo; echo "=== $* ($(( $(date +%s) - start )) s) ==="; }

  section "machine"
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); repo: $repo ($(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?'))"
  command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this script needs an NVIDIA GPU and its driver"
  nvidia-smi --query-gpu=index,name,driver_version,memory.total,clocks.max.sm --format=csv,noheader \
    || die "nvidia-smi sees no GPU"
  if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then export PATH=/usr/local/cuda/bin:$PATH; fi
  command -v nvcc >/dev/null || die "nvcc not found (install the CUDA toolkit or put its bin/ on PATH)"
  command -v cmake >/dev/null || die "cmake not found"
  echo "nvcc: $(nvcc --version | tail -n 2 | head -n 1)"
  echo "cmake: $(cmake --version | head -n 1); host compiler: $(${CXX:-c++} --version 2>/dev/null | head -n 1 || echo '?')"
  echo "python: $python: $("$python" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tail -n 1)"

  # Debian packages unpacked into a private prefix (no root, nothing installed).
  if [[ -n $deps ]]; then
    section "dependencies from $deps"
    [[ -d $deps ]] || die "--deps $deps: no such folder"
    prefix=$build_dir/deps-prefix
    mkdir -p "$prefix"
    shopt -s nullglob
    debs=("$deps"/*.deb)
    shopt -u nullglob
    [[ ${#debs[@]} -gt 0 ]] || die "--deps $deps holds no .deb files"
    for deb in "${debs[@]}"; do
      echo "unpacking $(basename "$deb")"
      if command -v dpkg >/dev/null; then
        dpkg -x "$deb" "$prefix"
      else  # ar (binutils) + tar: a .deb is an ar archive holding data.tar.*
        tmp=$(mktemp -d)
        member=$(cd "$tmp" && ar t "$deb" | grep '^data\.tar')
        (cd "$tmp" && ar x "$deb" "$member" && tar -xf "$member" -C "$prefix")
        rm -rf "$tmp"
      fi
    done
    export CMAKE_PREFIX_PATH="$prefix/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
    # doctest's CMake package names /usr/include outright: also an include path for every compile.
    export CPLUS_INCLUDE_PATH="$prefix/usr/include${CPLUS_INCLUDE_PATH:+:$CPLUS_INCLUDE_PATH}"
    export LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu${LIBRARY_PATH:+:$LIBRARY_PATH}"
    dep_libdir=$prefix/usr/lib/x86_64-linux-gnu
  fi

  # Which of the library's dependencies this machine lacks (cmake stops at the first).
  missing=()
  have_header() {
    local d
    for d in ${CPLUS_INCLUDE_PATH:+${CPLUS_INCLUDE_PATH//:/ }} /usr/include /usr/local/include; do
      [[ -e $d/$1 ]] && return 0
    done
    return 1
  }
  have_header eigen3/Eigen/Core || missing+=("libeigen3-dev")
  have_header fmt/format.h || missing+=("libfmt-dev libfmt9")
  have_header nlohmann/json.hpp || missing+=("nlohmann-json3-dev")
  have_header zstd.h || missing+=("libzstd-dev libzstd1")
  have_header utf8proc.h || missing+=("libutf8proc-dev libutf8proc2")
  have_header doctest/doctest.h || missing+=("doctest-dev")
  [[ $quickstart == 0 ]] || have_header CLI/CLI.hpp || missing+=("libcli11-dev")
  missing_hint() {
    echo "missing Debian packages: ${missing[*]}"
    echo "prepare them on a machine with apt:  mkdir -p debs && (cd debs && apt-get download ${missing[*]})"
    echo "then run:  benchmarks/gpu_check.sh --deps debs"
  }
  if [[ ${#missing[@]} -gt 0 ]]; then
    section "dependencies"
    missing_hint
    echo "(trying cmake anyway: it names the first one it cannot find)"
  fi

  if [[ -z $arch ]]; then  # e.g. "9.0" -> 90
    arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .' || true)
    [[ $arch =~ ^[0-9]+$ ]] || arch=native
  fi
  section "configure $build_dir (CUDA architectures: $arch)"
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  if [[ -f $build_dir/CMakeCache.txt ]] && ! grep -q "^CMAKE_GENERATOR:INTERNAL=${generator[1]:-Unix Makefiles}\$" "$build_dir/CMakeCache.txt"; then
    generator=()  # keep the generator the folder was made with
  fi
  # The CUDA tests' sources compile apart, in parallel on this machine's cores
  # (as one unit, CI's default, theirs would be the build's longest compile).
  if ! cmake -S "$repo" -B "$build_dir" "${generator[@]}" \
      -DCMAKE_BUILD_TYPE=Release -DDOREMI_CUDA=ON -DDOREMI_BUILD_TESTS=ON -DDOREMI_BUILD_BENCHMARKS=ON \
      -DDOREMI_UNITY_CUDA_TESTS=OFF \
      -DDOREMI_BUILD_EXAMPLES=$([[ $quickstart == 1 ]] && echo ON || echo OFF) "-DCMAKE_CUDA_ARCHITECTURES=$arch" \
      -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" -DCMAKE_POLICY_VERSION_MINIMUM=3.5 -Wno-dev; then
    [[ ${#missing[@]} -gt 0 ]] && missing_hint
    die "cmake configuration failed (see above)"
  fi

  targets=(bench_gpu_step)
  [[ $skip_tests == 1 ]] || targets=(doremi_cuda_tests bench_gpu_step)
  [[ $quickstart == 0 ]] || targets+=(doremi_cli)
  section "build ${targets[*]} (-j$jobs)"
  cmake --build "$build_dir" --target "${targets[@]}" -j "$jobs" || die "build failed (see above)"

  # The binaries find the unpacked libraries through their RPATH; if not, through LD_LIBRARY_PATH.
  run_env=()
  if [[ -n ${dep_libdir:-} ]]; then
    for bin in "$tests_bin" "$bench_bin" "$build_dir/examples/doremi"; do
      if [[ -x $bin ]] && ldd "$bin" 2>/dev/null | grep -q "not found"; then
        run_env=(env "LD_LIBRARY_PATH=$dep_libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
      fi
    done
  fi

  if [[ $skip_tests == 0 ]]; then
    section "CUDA tests"
    tests_out=$(mktemp)
    set +e
    "${run_env[@]}" timeout 300 "$tests_bin" 2>&1 | tee "$tests_out"  # a hung kernel ends here
    tests_rc=${PIPESTATUS[0]}
    [[ $tests_rc != 124 ]] || echo "CUDA tests: stopped after 300 s"
    set -e
    skipped=$(grep -c "skipped: no CUDA device" "$tests_out" || true)
    echo
    echo "CUDA tests: exit status $tests_rc; $(grep -E '^\[doctest\] (test cases|assertions):' "$tests_out" | tr '\n' ' ')"
    if [[ $skipped -gt 0 ]]; then
      echo "CUDA tests: $skipped cases SKIPPED for want of a device although nvidia-smi sees one: a failure here"
      tests_rc=1
    fi
    rm -f "$tests_out"
    [[ $tests_rc == 0 ]] || status=1
  fi

  bench_rc=0
  if [[ $bench == 1 ]]; then
    section "benchmark: doremi-120m, batch $batch x 1024, training step and DRO step"
    set +e
    "${run_env[@]}" timeout 600 "$bench_bin" --batch "$batch" --steps "$steps" --peak-tflops "$peak" --python "$python" \
      ${twin_args:+--twin-args "$twin_args"} "${bench_extra[@]}"
    bench_rc=$?
    set -e
    [[ $bench_rc == 0 ]] || { echo "bench_gpu_step failed (exit status $bench_rc)"; status=1; }
  fi

  # The other tensor-core attention family (attention_mma.hpp), ours only, beside the default's figures above.
  if [[ $bench == 1 && -z ${DOREMI_CUDA_ATTENTION:-} ]]; then
    section "benchmark: the same steps with DOREMI_CUDA_ATTENTION=mma (register-resident attention kernels)"
    set +e
    "${run_env[@]}" env DOREMI_CUDA_ATTENTION=mma timeout 300 "$bench_bin" --batch "$batch" --steps "$steps" \
      --peak-tflops "$peak" --no-twin --no-attention --no-tuned "${bench_extra[@]}"
    mma_rc=$?
    set -e
    [[ $mma_rc == 0 ]] || { echo "bench_gpu_step with DOREMI_CUDA_ATTENTION=mma failed (exit status $mma_rc)"; status=1; }
  fi

  if [[ $profile == 1 ]]; then
    section "profile: GPU time per kernel, one training step and one DRO step (ncu)"
    ncu_bin=$(command -v ncu || true)
    [[ -n $ncu_bin || ! -x /usr/local/cuda/bin/ncu ]] || ncu_bin=/usr/local/cuda/bin/ncu
    if [[ -z $ncu_bin ]]; then
      echo "ncu (Nsight Compute) not found: no profile"; status=1
    else
      # The default attention family, then (unless DOREMI_CUDA_ATTENTION is set) the mma one.
      families=(default)
      [[ -n ${DOREMI_CUDA_ATTENTION:-} ]] || families+=(mma)
      for family in "${families[@]}"; do
        csv=${log%.log}.ncu-$family.csv  # beside the log: what comes back from a remote run
        family_env=()
        [[ $family == default ]] || family_env=(env "DOREMI_CUDA_ATTENTION=$family")
        echo "--- attention kernels: $family ---"
        set +e
        "${run_env[@]}" "${family_env[@]}" timeout 300 "$ncu_bin" --csv --print-units base --clock-control none \
          --metrics gpu__time_duration.sum "$bench_bin" --batch "$batch" --steps 1 --warmup 0 --no-twin --no-attention --no-tuned \
          > "$csv" 2> "${csv%.csv}.err"
        prof_rc=$?
        set -e
        if [[ $prof_rc == 0 ]] && "$python" "$repo/benchmarks/ncu_summary.py" "$csv"; then
          echo "(every kernel of the run: model set-up, one training step, one DRO step; CSV: $csv)"
        else
          echo "profile failed (ncu exit status $prof_rc):"; tail -n 20 "${csv%.csv}.err"; status=1
        fi
      done

      # Why the attention kernels take the time they do: one launch of each
      # kernel of each family (forward, dK/dV, dQ) during bench_gpu_step's
      # attention-alone timing, with ncu's "full" set of sections (throughputs,
      # occupancy and its limits, warp stalls, shared-memory bank conflicts,
      # ncu's own hints) and the tensor pipe's share of the cycles.
      section "profile: the attention kernels' hardware counters (ncu, one launch of each)"
      details=${log%.log}.attention-ncu.txt
      : > "$details"
      hmma=sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active
      for kernels in attention_tc_ attention_mma_; do
        ncu_args=(--set full --clock-control none --kernel-name "regex:${kernels}(forward|backward)"
                  --launch-count 3)
        set +e
        for metrics in "--metrics $hmma" ""; do  # without the extra metric if this ncu does not know it
          # shellcheck disable=SC2086
          "${run_env[@]}" timeout 300 "$ncu_bin" "${ncu_args[@]}" $metrics "$bench_bin" --batch "$batch" \
            --steps 2 --warmup 1 --attention-only > "$details.part" 2>&1
          prof_rc=$?
          [[ $prof_rc != 0 ]] || break
        done
        set -e
        cat "$details.part" >> "$details"
        echo "--- ${kernels%_} kernels (ncu exit status $prof_rc) ---"
        # Each kernel's header line and the counters that say what bounds it.
        grep -iE "${kernels}[a-z_]+kernel.*context|duration|compute \(sm\) throughput|memory throughput|\
registers per thread|achieved occupancy|theoretical occupancy|block limit (registers|shared mem)|\
warp cycles per issued|issue slots busy|bank conflict|$hmma" "$details.part" | grep -v "^==" \
          || echo "(no counters: see $details)"
        [[ $prof_rc == 0 ]] || status=1
      done
      rm -f "$details.part"
      echo "(ncu's whole report, hints included: $details)"
    fi
  fi

  if [[ $quickstart == 1 ]]; then
    section "doremi quickstart --device cuda"
    rm -rf "$build_dir/quickstart"
    set +e
    "${run_env[@]}" timeout 300 "$build_dir/examples/doremi" quickstart --device cuda --output "$build_dir/quickstart"
    qs_rc=$?
    set -e
    [[ $qs_rc == 0 ]] || { echo "quickstart failed (exit status $qs_rc)"; status=1; }
  fi

  section "done"
  [[ $skip_tests == 1 ]] || echo "CUDA tests: $([[ ${tests_rc:-1} == 0 ]] && echo passed || echo FAILED)"
  [[ $bench == 0 ]] || echo "benchmark: $([[ $bench_rc == 0 ]] && echo ran || echo FAILED)"
  echo "log: $log"
  [[ $quickstart == 0 ]] || echo "quickstart on the GPU: $([[ $qs_rc == 0 ]] && echo ran || echo FAILED)"
  total=$(( $(date +%s) - start ))
  elapsed
  [[ $total -le 480 ]] || echo "note: over the 8-minute budget of the issue"
  return $status
}

# Everything to the terminal and the log; the exit status is main's (pipefail).
mkdir -p "$(dirname "$log")"
main 2>&1 | tee "$log"
