// Calling the specdec ops from C++: load the extension's shared library (its static initializers register the
// ops with the dispatcher; no Python interpreter runs) and call an op by name. Usage: call_ops PATH_TO_C_SO
#include <ATen/core/dispatch/Dispatcher.h>
#include <dlfcn.h>
#include <torch/torch.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 2 || !dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL)) {
    std::cerr << "usage: call_ops specdec_kernels/_C...so (" << (argc == 2 ? dlerror() : "no path") << ")\n";
    return 2;
  }
  using Verdict = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
  auto verify = c10::Dispatcher::singleton()
                    .findSchemaOrThrow("specdec::tree_verify_greedy", "")
                    .typed<Verdict(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  // The tree 42 -> {7 -> 13, 9}; the target agrees with 7, then with 13, then wants token 5.
  auto tokens = torch::tensor({{42, 7, 9, 13}}, torch::kLong);
  auto parents = torch::tensor({{-1, 0, 0, 1}}, torch::kLong);
  auto logits = torch::zeros({1, 4, 100});
  logits.index_put_({0, 0, 7}, 1.0);
  logits.index_put_({0, 1, 13}, 1.0);
  logits.index_put_({0, 3, 5}, 1.0);
  auto [accept_idx, accept_len, bonus] = verify.call(tokens, parents, logits);
  std::cout << "accepted";
  for (int64_t i = 0; i < accept_len.item<int64_t>(); ++i) std::cout << " " << accept_idx[0][i].item<int64_t>();
  std::cout << " bonus " << bonus.item<int64_t>() << "\n";
}
