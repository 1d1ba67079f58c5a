// The lesson's challenge "a parallel image processing system": a Mandelbrot set rendered by an mp::Pool straight
// into a shared mp::Array of RGB pixels, then written as a binary PPM (P6) that any image viewer opens.
// The same image is rendered serially first; the program times both, checks the pool's pixels equal the serial
// ones (exit 1 otherwise) and prints the speedup.
//
//   parallel_image_processing [--width W] [--height H] [--max-iter N] [--processes N] [--out FILE]
//
// How the pixels get back: the Array is created before the Pool, so every worker inherits the shared mapping
// (Python's rule too: shared ctypes objects reach pool workers through inheritance, not as task arguments).
// Each task is a band of rows: the workers write their pixels in place and return only the band's number.
#include <mp/pool.hpp>
#include <mp/shared.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace {

/// One band of rows to render; plain data, so it crosses to a worker by copy.
struct band {
  int y0 = 0, y1 = 0;
  int width = 0, height = 0, max_iter = 0;
};

/// The image the pool renders into, created before the pool so its workers inherit the mapping.
std::optional<mp::Array<std::uint8_t>> shared_image;

/// The color of pixel (x, y): smooth escape time through a polynomial palette; black inside the set.
void shade(int x, int y, int width, int height, int max_iter, std::uint8_t* rgb) {
  // View of the whole set, its aspect kept: real part -2.5..1.0, imaginary part centred on 0.
  const double scale = 3.5 / width;
  const double cr = -2.5 + (x + 0.5) * scale;
  const double ci = (y + 0.5 - height / 2.0) * scale;
  double zr = 0, zi = 0;
  int it = 0;
  // Bail out at |z| = 256 rather than 2: the smooth (fractional) escape count below is then accurate.
  while (it < max_iter && zr * zr + zi * zi <= 65536.0) {
    const double next = zr * zr - zi * zi + cr;
    zi = 2 * zr * zi + ci;
    zr = next;
    ++it;
  }
  double t = 0;  // 0 inside the set (black)
  if (it < max_iter) {
    const double smooth = it + 1 - std::log2(std::log2(zr * zr + zi * zi) / 2);
    t = std::clamp(std::sqrt(std::max(smooth, 0.0) / max_iter), 0.0, 1.0);
  }
  rgb[0] = static_cast<std::uint8_t>(9 * (1 - t) * t * t * t * 255);
  rgb[1] = static_cast<std::uint8_t>(15 * (1 - t) * (1 - t) * t * t * 255);
  rgb[2] = static_cast<std::uint8_t>(8.5 * (1 - t) * (1 - t) * (1 - t) * t * 255);
}

void render(const band& b, std::uint8_t* image) {
  for (int y = b.y0; y < b.y1; ++y) {
    for (int x = 0; x < b.width; ++x) {
      shade(x, y, b.width, b.height, b.max_iter, image + (static_cast<std::size_t>(y) * b.width + x) * 3);
    }
  }
}

/// Pool task: renders one band into the inherited shared image; returns the number of rows done.
int render_band(band b) {
  render(b, shared_image->data());
  return b.y1 - b.y0;
}

bool write_ppm(const std::string& path, int width, int height, const std::uint8_t* rgb) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return false;
  std::fprintf(f, "P6\n%d %d\n255\n", width, height);
  const std::size_t n = static_cast<std::size_t>(width) * height * 3;
  const bool ok = std::fwrite(rgb, 1, n, f) == n;
  return std::fclose(f) == 0 && ok;
}

void usage(FILE* out) {
  std::fputs("usage: parallel_image_processing [--width W] [--height H] [--max-iter N] [--processes N] [--out FILE]\n"
             "  Renders the Mandelbrot set serially and with an mp::Pool into a shared mp::Array, checks both images\n"
             "  are equal, prints the timings and writes the image as a PPM (default: 800x600, 256 iterations,\n"
             "  cpu_count() processes, mandelbrot.ppm).\n",
             out);
}

}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);

  int width = 800, height = 600, max_iter = 256, processes = 0;
  std::string out = "mandelbrot.ppm";
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      usage(stdout);
      return 0;
    }
    if (arg == "--out" && i + 1 < argc) {
      out = argv[++i];
      continue;
    }
    int* target = arg == "--width" ? &width : arg == "--height" ? &height : arg == "--max-iter" ? &max_iter
                : arg == "--processes" ? &processes : nullptr;
    char* end = nullptr;
    long v = target != nullptr && i + 1 < argc ? std::strtol(argv[i + 1], &end, 10) : 0;
    if (target == nullptr || i + 1 >= argc || *end != '\0' || v < 1 || v > 20000) {
      std::fprintf(stderr, "parallel_image_processing: bad argument '%s' (numbers are 1..20000)\n", argv[i]);
      usage(stderr);
      return 2;
    }
    *target = static_cast<int>(v);
    ++i;
  }
  if (processes == 0) processes = static_cast<int>(mp::cpu_count());
  const bool progress = ::isatty(1);
  const std::size_t bytes = static_cast<std::size_t>(width) * height * 3;
  using clock_type = std::chrono::steady_clock;

  // Serial reference.
  std::vector<std::uint8_t> serial(bytes);
  if (progress) {
    std::printf("rendering serially...");
    std::fflush(stdout);
  }
  auto t0 = clock_type::now();
  render({0, height, width, height, max_iter}, serial.data());
  std::chrono::duration<double> serial_time = clock_type::now() - t0;

  // Parallel: bands of rows, several per worker so a band full of black (slow) pixels does not leave others idle.
  shared_image.emplace(bytes);
  const int rows_per_band = std::max(1, height / (processes * 16));
  std::vector<band> bands;
  for (int y = 0; y < height; y += rows_per_band) bands.push_back({y, std::min(height, y + rows_per_band), width, height, max_iter});
  auto t1 = clock_type::now();
  int rows_done = 0;
  {
    mp::Pool pool(static_cast<std::size_t>(processes));
    for (int rows : pool.imap_unordered(render_band, bands)) {
      rows_done += rows;
      if (progress) {
        std::printf("\rrendering: %3d%% (%d/%d rows)", rows_done * 100 / height, rows_done, height);
        std::fflush(stdout);
      }
    }
  }
  std::chrono::duration<double> parallel_time = clock_type::now() - t1;
  if (progress) std::printf("\r\033[K");

  const std::uint8_t* image = shared_image->data();
  const bool equal = rows_done == height && std::memcmp(image, serial.data(), bytes) == 0;
  std::printf("Mandelbrot %dx%d, %d iterations, %d processes, %zu bands\n", width, height, max_iter, processes,
              bands.size());
  std::printf("serial:   %8.1f ms\n", serial_time.count() * 1e3);
  std::printf("parallel: %8.1f ms (pool start-up included)  speedup %.2fx\n", parallel_time.count() * 1e3,
              serial_time.count() / parallel_time.count());
  std::printf("images equal: %s\n", equal ? "yes" : "NO");
  if (!write_ppm(out, width, height, image)) {
    std::fprintf(stderr, "parallel_image_processing: cannot write %s: %s\n", out.c_str(), std::strerror(errno));
    return 1;
  }
  std::printf("wrote %s\n", out.c_str());
  return equal ? 0 : 1;
}
