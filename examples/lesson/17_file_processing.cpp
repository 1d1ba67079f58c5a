// Lesson "Example 2: File Processing": a pool processes four files; the results come back in input order.
//
//   def process_file(filename):
//       """Process a single file"""
//       print(f"Processing {filename}")
//       # Simulate file processing
//       time.sleep(1)
//       return f"Processed {filename}"
//
//   files = ['file1.txt', 'file2.txt', 'file3.txt', 'file4.txt']
//   with multiprocessing.Pool() as pool:
//       results = pool.map(process_file, files)
//   for result in results:
//       print(result)
//
// The lesson's snippet forgot `import time` and never creates the files: this does what it meant. Four real files
// are written to a temporary directory, and each worker opens its file and counts its lines. The "Processing"
// lines come from the workers in any order (compared unordered); the results are printed after map() returns.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include <mp/pool.hpp>

std::string process_file(const std::string& path) {  // process a single file
  const std::string filename = std::filesystem::path(path).filename().string();
  std::cout << "Processing " << filename << std::endl;
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

  for (const auto& result : results) std::cout << result << std::endl;
}
