#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml-opt.h"
#include "gguf.h"
// The interfaces a backend implements (registry, device, buffer type, buffer, stream):
// graft-wgpu implements them in Rust. The header lives in ggml/src, beside ggml/include.
#include "../src/ggml-backend-impl.h"
#ifdef GRAFT_GGML_CUDA
#include "ggml-cuda.h"
#endif
#ifdef GRAFT_GGML_METAL
#include "ggml-metal.h"
#endif
#ifdef GRAFT_GGML_VULKAN
#include "ggml-vulkan.h"
#endif
