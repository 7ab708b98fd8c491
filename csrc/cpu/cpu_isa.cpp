// Which instruction set the CPU kernels run with (see DDPM_PA_DISPATCH_BY_ISA in cpu_kernel_utils.h).
#include <cstdlib>
#include <string>

#include "cpu_kernel_utils.h"

namespace ddpm_pa {
namespace cpu {
namespace {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "baseline";
  }
}

Isa best_supported_isa() {
#if DDPM_PA_X86_ISA_COPIES
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return Isa::kAvx512;
  if (__builtin_cpu_supports("x86-64-v3")) return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

// The set the kernels use, and why it is not the one DDPM_PA_CPU_ISA asked for (empty when it is).
// No exception or warning from here: the first call may come from a worker thread, or through ctypes.
struct IsaSelection {
  Isa isa;
  std::string note;
};

IsaSelection choose_isa() {
  const Isa best = best_supported_isa();
  const char* requested = std::getenv("DDPM_PA_CPU_ISA");
  if (requested == nullptr || *requested == '\0') return {best, ""};
  const std::string name(requested);
  for (const Isa isa : {Isa::kAvx512, Isa::kAvx2, Isa::kBaseline}) {
    if (name != isa_name(isa)) continue;
    // Isa is ordered best first: a set above the CPU's would crash on its first instruction.
    if (static_cast<int>(isa) < static_cast<int>(best))
      return {best, "DDPM_PA_CPU_ISA=" + name + ": this CPU (or this build) supports only '" + isa_name(best) +
                        "'; using that"};
    return {isa, ""};
  }
  return {best, "DDPM_PA_CPU_ISA must be one of 'avx512', 'avx2', 'baseline' (or unset for the best this CPU "
                "supports); got '" + name + "', so using '" + isa_name(best) + "'"};
}

const IsaSelection& selection() {
  static const IsaSelection chosen = choose_isa();
  return chosen;
}

}  // namespace

Isa selected_isa() { return selection().isa; }

}  // namespace cpu
}  // namespace ddpm_pa

// For ddpm_pa_fast.ops.cpu_isa(), read through ctypes like the CUDA build version: the set's name,
// and why it is not the one DDPM_PA_CPU_ISA asked for ("" when it is).
extern "C" __attribute__((visibility("default"))) const char* ddpm_pa_fast_cpu_isa() {
  return ddpm_pa::cpu::isa_name(ddpm_pa::cpu::selection().isa);
}

extern "C" __attribute__((visibility("default"))) const char* ddpm_pa_fast_cpu_isa_note() {
  return ddpm_pa::cpu::selection().note.c_str();
}
