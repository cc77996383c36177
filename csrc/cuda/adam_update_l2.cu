// The Adam update kernels of the L2 (Adam) weight decay mode.
#include "adam_update.cuh"

namespace fused_accum {
namespace cuda {

template void launch_adam_update<DecayMode::kL2>(const DenseRows&, const AdamCall&,
                                                   const AdamDeviceArgs&);

}  // namespace cuda
}  // namespace fused_accum
