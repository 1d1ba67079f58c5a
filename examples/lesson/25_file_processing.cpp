// Lesson "Example 2: File Processing": four real files are created in a temporary directory, then a pool
// processes them (each worker opens its file and counts its lines); results come back in input order.
// The lesson's snippet forgot `import time` and never created the files: this does what it meant.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <mp/pool.hpp>

std::string process_file(const std::string& path) {  // process a single file
  const std::string filename = std::filesystem::path(path).filename().string();
  std::printf("Processing %s\n", filename.c_str());
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::size_t lines = 0;
  for (std::string line; std::getline(in, line);) ++lines;
  if (lines == 0) throw std::runtime_error(path + " is empty");
  return "Processed " + filename;
}

int main(int argc, char** argv) {
  mp::init(argc, argv);
  const auto dir = std::filesystem::temp_directory_path() / ("mp-lesson-files-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::vector<std::string> files;
  for (int i = 1; i <= 4; ++i) {
    const auto path = dir / ("file" + std::to_string(i) + ".txt");
    std::ofstream(path) << "line one of file " << i << "\nline two\nline three\n";
    files.push_back(path.string());
  }

  std::vector<std::string> results;
  {
    mp::Pool pool;
    results = pool.map(process_file, files);
  }
  std::filesystem::remove_all(dir);

  for (const auto& result : results) std::printf("%s\n", result.c_str());
}
