// mm's shim over libtorch's c10d (the engine under torch.distributed): a TCPStore rendezvous, a
// Gloo or NCCL process group, and the collectives data-parallel training needs (all-reduce,
// broadcast, barrier), behind a small C interface that `mm_train::dist` calls.
//
// Everything here is libtorch's own code: the store, the process groups and their transports
// live in libtorch_cpu.so (Gloo) and libtorch_cuda.so (NCCL); this file only creates them and
// turns their C++ exceptions into error strings. Tensors arrive as the `at::Tensor*` that tch's
// C API uses for a tensor handle.

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef MM_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
  int device_index;  // -1 on the CPU
};

char* copy_message(const std::string& message) {
  char* out = static_cast<char*>(std::malloc(message.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, message.c_str(), message.size() + 1);
  }
  return out;
}

// Runs `f`, turning any exception into a message in `*err` and a non-zero return.
template <typename F>
int guarded(char** err, F&& f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    *err = copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *err = copy_message(e.what());
  } catch (...) {
    *err = copy_message("unknown C++ exception in c10d");
  }
  return 1;
}

std::vector<at::Tensor> gather(at::Tensor* const* tensors, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(*tensors[i]);
  }
  return out;
}

// Runs `start` on each tensor (one collective each), starting every one before the first is
// waited on, so the transport pipelines them (Gloo on its worker threads, NCCL on its stream).
template <typename Start>
void each_then_wait(at::Tensor* const* tensors, size_t n, Start&& start) {
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  for (auto& tensor : gather(tensors, n)) {
    std::vector<at::Tensor> one{tensor};
    works.push_back(start(one));
  }
  for (auto& work : works) {
    work->wait();
  }
}

}  // namespace

extern "C" {

typedef struct Group mm_c10d;

int mm_c10d_has_nccl() {
#ifdef MM_C10D_NCCL
  return 1;
#else
  return 0;
#endif
}

// Rendezvous at addr:port (rank 0 serves the store) and create the process group.
// backend: 0 Gloo, 1 NCCL (device_index is then the CUDA device of this rank).
// ifname: the network interface Gloo binds to (GLOO_SOCKET_IFNAME), or null; with none, Gloo
// binds to the loopback address when addr is a loopback address, else to this host's name.
mm_c10d* mm_c10d_new(int backend, const char* addr, uint16_t port, int rank, int world,
                     int64_t timeout_ms, const char* ifname, int device_index, char** err) {
  auto group = std::make_unique<Group>();
  group->timeout = std::chrono::milliseconds(timeout_ms);
  group->device_index = backend == 1 ? device_index : -1;
  int rc = guarded(err, [&] {
    c10d::TCPStoreOptions store_options;
    store_options.port = port;
    store_options.isServer = rank == 0;
    store_options.numWorkers = static_cast<size_t>(world);
    store_options.waitWorkers = true;
    store_options.timeout = group->timeout;
    group->store = c10::make_intrusive<c10d::TCPStore>(std::string(addr), store_options);
    if (backend == 0) {
      auto options = c10d::ProcessGroupGloo::Options::create(group->timeout);
      std::string host(addr);
      if (ifname != nullptr && ifname[0] != '\0') {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      } else if (host == "127.0.0.1" || host == "localhost" || host == "::1") {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      } else {
        options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      group->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(group->store, rank, world, options);
    } else {
#ifdef MM_C10D_NCCL
      // The communicators bind to the devices of the tensors each collective gets (and the
      // barrier to `device_index`).
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = group->timeout;
      group->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(group->store, rank, world, options);
#else
      throw std::runtime_error("this build of mm has no NCCL support (its libtorch has no CUDA)");
#endif
    }
  });
  if (rc != 0) {
    return nullptr;
  }
  return group.release();
}

void mm_c10d_free(mm_c10d* group) {
  delete group;
}

void mm_c10d_free_error(char* err) {
  std::free(err);
}

// In-place all-reduce of each tensor; op: 0 sum, 1 max, 2 min.
int mm_c10d_allreduce(mm_c10d* group, at::Tensor* const* tensors, size_t n, int op, char** err) {
  return guarded(err, [&] {
    c10d::AllreduceOptions options;
    options.reduceOp = op == 1 ? c10d::ReduceOp::MAX : op == 2 ? c10d::ReduceOp::MIN : c10d::ReduceOp::SUM;
    options.timeout = group->timeout;
    each_then_wait(tensors, n, [&](std::vector<at::Tensor>& one) { return group->backend->allreduce(one, options); });
  });
}

// In-place broadcast of each tensor from `root`.
int mm_c10d_broadcast(mm_c10d* group, at::Tensor* const* tensors, size_t n, int root, char** err) {
  return guarded(err, [&] {
    c10d::BroadcastOptions options;
    options.rootRank = root;
    options.timeout = group->timeout;
    each_then_wait(tensors, n, [&](std::vector<at::Tensor>& one) { return group->backend->broadcast(one, options); });
  });
}

int mm_c10d_barrier(mm_c10d* group, char** err) {
  return guarded(err, [&] {
    c10d::BarrierOptions options;
    options.timeout = group->timeout;
    if (group->device_index >= 0) {
      options.device_ids = {group->device_index};
    }
    auto work = group->backend->barrier(options);
    work->wait();
  });
}

}  // extern "C"
