// A growable per-thread scratch buffer in 2 MiB-aligned memory that the kernel may back with huge pages.
// With 4 KiB pages the physical placement (and so the L2 sets) of a kernel's working set changes from
// process to process, and with it the time of L2-bound loops such as AMX tile loads.
// Growing never shrinks; the contents are not kept across a growth.
#pragma once
#include <sys/mman.h>

#include <c10/util/Exception.h>

#include <cstddef>
#include <cstdlib>

namespace specdec {

class HugeBuffer {
 public:
  static constexpr size_t kHugePage = size_t{2} << 20;
  HugeBuffer() = default;
  HugeBuffer(const HugeBuffer&) = delete;
  HugeBuffer& operator=(const HugeBuffer&) = delete;
  ~HugeBuffer() { std::free(data_); }

  // At least `bytes` bytes, 2 MiB-aligned.
  void* reserve(size_t bytes) {
    if (bytes > size_) {
      std::free(data_);
      size_ = (bytes + kHugePage - 1) / kHugePage * kHugePage;
      data_ = static_cast<char*>(std::aligned_alloc(kHugePage, size_));
      TORCH_CHECK(data_ != nullptr, "cannot allocate ", size_, " bytes of scratch");
#ifdef MADV_HUGEPAGE
      madvise(data_, size_, MADV_HUGEPAGE);  // a hint: without it (or without THP) plain pages
#endif
    }
    return data_;
  }

 private:
  char* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace specdec
