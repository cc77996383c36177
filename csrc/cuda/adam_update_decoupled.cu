// The Adam update kernels of the decoupled (AdamW) weight decay mode.
#include "adam_update.cuh"

namespace fused_accum {
namespace cuda {

template void launch_adam_update<DecayMode::kDecoupled>(const DenseRows&, const AdamCall&,
                                                   const AdamDeviceArgs&);

}  // namespace cuda
}  // namespace fused_accum
