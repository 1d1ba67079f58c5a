// The lesson's challenge "a parallel file search utility": a small grep over directory trees, one file per task,
// spread over an mp::Pool with imap_unordered (results printed as files finish, in completion order).
//
//   parallel_file_search [-i] [-n] [-E] [-j N] PATTERN [PATH...]
//
// Prints matching lines as PATH:TEXT (PATH:LINE:TEXT with -n). Exit status as grep's: 0 when a line matched, 1 when
// none did, 2 on a usage error or an unreadable path. --self-test builds a temporary tree with known contents,
// searches it several ways, checks every hit and removes the tree (ctest runs that).
#include <mp/pool.hpp>

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace fs = std::filesystem;

namespace {

/// One matching line of a file.
struct hit {
  std::size_t line = 0;
  std::string text;
  template <class Archive>
  void serialize(Archive& ar) { ar(line, text); }
};

/// What a worker found in one file: its hits, or why it could not read it.
struct file_result {
  std::string path;
  std::vector<hit> hits;
  std::string error;
  template <class Archive>
  void serialize(Archive& ar) { ar(path, hits, error); }
};

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

/// The task sent to the pool: the pattern and flags cross to the workers with each task (serialized), so the
/// pool needs no global state and works with any start method.
struct searcher {
  std::string pattern;
  bool ignore_case = false;
  bool extended = false;  // std::regex (ECMAScript) instead of a plain substring

  template <class Archive>
  void serialize(Archive& ar) { ar(pattern, ignore_case, extended); }

  file_result operator()(const std::string& path) const {
    file_result result{path, {}, {}};
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      result.error = path + ": cannot open for reading";
      return result;
    }
    std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) {
      result.error = path + ": read error";
      return result;
    }
    if (content.find('\0') != std::string::npos) return result;  // binary file: skipped, as grep -I
    std::size_t line_no = 0, pos = 0;
    while (pos < content.size()) {
      std::size_t end = content.find('\n', pos);
      if (end == std::string::npos) end = content.size();
      std::string_view line(content.data() + pos, end - pos);
      ++line_no;
      if (matches(line)) result.hits.push_back({line_no, std::string(line)});
      pos = end + 1;
    }
    return result;
  }

  bool matches(std::string_view line) const {
    if (extended) return std::regex_search(line.begin(), line.end(), compiled());
    if (ignore_case) return lower(line).find(lower(pattern)) != std::string::npos;
    return line.find(pattern) != std::string_view::npos;
  }

  /// The regex, compiled once per worker process and pattern (a worker serves many files).
  const std::regex& compiled() const {
    static std::string cached_key;
    static std::regex cached;
    std::string key = pattern + (ignore_case ? "\1i" : "\1");
    if (key != cached_key) {
      auto flags = std::regex::ECMAScript | (ignore_case ? std::regex::icase : std::regex::flag_type{});
      cached = std::regex(pattern, flags);
      cached_key = key;
    }
    return cached;
  }
};

struct options {
  searcher search;
  bool line_numbers = false;
  std::size_t jobs = 0;  // 0: cpu_count()
  std::vector<std::string> paths;
};

/// Every regular file under `paths` (a path may itself be a file). Unreadable entries are reported, not fatal.
std::vector<std::string> collect_files(const std::vector<std::string>& paths, std::vector<std::string>& errors) {
  std::vector<std::string> files;
  for (const auto& root : paths) {
    std::error_code ec;
    auto status = fs::status(root, ec);
    if (ec) {
      errors.push_back(root + ": " + ec.message());
      continue;
    }
    if (fs::is_regular_file(status)) {
      files.push_back(root);
      continue;
    }
    fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec), end;
    if (ec) {
      errors.push_back(root + ": " + ec.message());
      continue;
    }
    for (; it != end; it.increment(ec)) {
      if (ec) {
        errors.push_back(it->path().string() + ": " + ec.message());
        break;
      }
      if (it->is_regular_file(ec)) files.push_back(it->path().string());
    }
  }
  return files;
}

/// Searches and hands every output line to `emit` as results arrive; returns grep's exit status.
int search(const options& opt, const std::function<void(const std::string&)>& emit,
           const std::function<void(const std::string&)>& error, bool progress) {
  std::vector<std::string> errors;
  std::vector<std::string> files = collect_files(opt.paths, errors);
  for (const auto& e : errors) error(e);
  if (opt.search.extended) {
    try {
      (void)opt.search.compiled();  // a bad regex is a usage error, reported once here rather than per file
    } catch (const std::regex_error& e) {
      error("invalid regular expression '" + opt.search.pattern + "': " + e.what());
      return 2;
    }
  }

  bool found = false;
  std::size_t done = 0;
  if (!files.empty()) {
    mp::Pool pool(opt.jobs);
    const std::size_t workers = opt.jobs != 0 ? opt.jobs : static_cast<std::size_t>(mp::cpu_count());
    // Several files per task when there are many: the per-task round trip then stays small beside the search.
    const std::size_t chunksize = std::clamp<std::size_t>(files.size() / (8 * workers), 1, 64);
    for (const file_result& r : pool.imap_unordered(opt.search, files, chunksize)) {
      ++done;
      if (progress) std::fprintf(stderr, "\r\033[K");
      if (!r.error.empty()) {
        error(r.error);
        errors.push_back(r.error);
      }
      for (const hit& h : r.hits) {
        found = true;
        emit(opt.line_numbers ? r.path + ":" + std::to_string(h.line) + ":" + h.text : r.path + ":" + h.text);
      }
      if (progress) std::fprintf(stderr, "searched %zu/%zu files", done, files.size());
    }
    if (progress) std::fprintf(stderr, "\r\033[K");
  }
  if (!errors.empty()) return 2;
  return found ? 0 : 1;
}

void usage(FILE* out) {
  std::fputs(
      "usage: parallel_file_search [-i] [-n] [-E] [-j N] PATTERN [PATH...]\n"
      "       parallel_file_search --self-test\n"
      "Searches every regular file under each PATH (default: .) for lines containing PATTERN, one file per\n"
      "task on an mp::Pool (imap_unordered: files are reported as they finish). Binary files are skipped.\n"
      "  -i          ignore case\n"
      "  -n          print line numbers (PATH:LINE:TEXT)\n"
      "  -E          PATTERN is a regular expression (ECMAScript syntax) rather than a plain string\n"
      "  -j N        use N worker processes (default: cpu_count())\n"
      "  --self-test search a generated tree with known contents and check the hits\n"
      "Exit status: 0 if a line matched, 1 if none did, 2 on a usage error or an unreadable path.\n",
      out);
}

/// Parses the command line; nullopt after printing the reason on a usage error.
std::optional<options> parse(int argc, char** argv) {
  options opt;
  std::optional<std::string> pattern;
  bool only_operands = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (only_operands || arg.empty() || arg[0] != '-' || arg == "-") {
      if (!pattern) {
        pattern = std::string(arg);
      } else {
        opt.paths.emplace_back(arg);
      }
      continue;
    }
    if (arg == "--") {
      only_operands = true;
    } else if (arg == "-j") {
      char* end = nullptr;
      long n = i + 1 < argc ? std::strtol(argv[i + 1], &end, 10) : 0;
      if (i + 1 >= argc || *end != '\0' || n < 1 || n > 1024) {
        std::fprintf(stderr, "parallel_file_search: -j needs a number of processes between 1 and 1024\n");
        return std::nullopt;
      }
      opt.jobs = static_cast<std::size_t>(n);
      ++i;
    } else if (arg.size() >= 2 && arg[1] != '-') {  // bundled short flags: -in, -nE
      for (char c : arg.substr(1)) {
        if (c == 'i') {
          opt.search.ignore_case = true;
        } else if (c == 'n') {
          opt.line_numbers = true;
        } else if (c == 'E') {
          opt.search.extended = true;
        } else {
          std::fprintf(stderr, "parallel_file_search: unknown option -%c (see --help)\n", c);
          return std::nullopt;
        }
      }
    } else {
      std::fprintf(stderr, "parallel_file_search: unknown option %s (see --help)\n", argv[i]);
      return std::nullopt;
    }
  }
  if (!pattern) {
    std::fprintf(stderr, "parallel_file_search: missing PATTERN (see --help)\n");
    return std::nullopt;
  }
  opt.search.pattern = *pattern;
  if (opt.paths.empty()) opt.paths.emplace_back(".");
  return opt;
}

/// A temporary directory removed with everything in it when this goes out of scope.
class temp_tree {
 public:
  temp_tree() {
    std::string templ = (fs::temp_directory_path() / "mp-file-search-XXXXXX").string();
    if (::mkdtemp(templ.data()) == nullptr) throw std::runtime_error("mkdtemp(" + templ + ") failed");
    root_ = templ;
  }
  temp_tree(const temp_tree&) = delete;
  temp_tree& operator=(const temp_tree&) = delete;
  ~temp_tree() {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }
  const fs::path& root() const { return root_; }
  void write(const fs::path& relative, const std::string& content) const {
    fs::create_directories((root_ / relative).parent_path());
    std::ofstream(root_ / relative, std::ios::binary) << content;
  }

 private:
  fs::path root_;
};

int self_test() {
  temp_tree tree;
  const std::string root = tree.root().string();
  std::multiset<std::string> want_plain, want_icase, want_regex;
  tree.write("a/one.txt", "alpha\nneedle here\nbeta\n");
  want_plain.insert(root + "/a/one.txt:2:needle here");
  tree.write("a/b/two.txt", "NEEDLE upper\nnothing\nno newline at end: needle");
  want_icase.insert(root + "/a/b/two.txt:1:NEEDLE upper");
  want_plain.insert(root + "/a/b/two.txt:3:no newline at end: needle");
  tree.write("c/binary.bin", std::string("needle\0needle\n", 14));  // skipped: binary
  tree.write("c/empty.txt", "");
  tree.write("c/d/e/deep.log", "x\ny needle z\nneeeedle\n");
  want_plain.insert(root + "/c/d/e/deep.log:2:y needle z");
  want_regex.insert(root + "/c/d/e/deep.log:3:neeeedle");
  for (int i = 0; i < 200; ++i) {  // enough files that several workers and chunks take part
    std::string name = "many/file" + std::to_string(i) + ".txt";
    std::string content = "line one\n";
    if (i % 7 == 0) {
      content += "the needle " + std::to_string(i) + "\n";
      want_plain.insert(root + "/" + name + ":2:the needle " + std::to_string(i));
    }
    tree.write(name, content);
  }
  for (const auto& w : want_plain) want_icase.insert(w);
  for (const auto& w : want_plain) want_regex.insert(w);

  int failures = 0;
  auto run = [&](std::vector<std::string> args, int want_status, const std::multiset<std::string>& want_lines) {
    std::vector<char*> argv{const_cast<char*>("parallel_file_search")};
    for (auto& a : args) argv.push_back(a.data());
    auto opt = parse(static_cast<int>(argv.size()), argv.data());
    std::multiset<std::string> got;
    std::string joined;
    for (const auto& a : args) joined += " " + a;
    int status = opt ? search(*opt, [&](const std::string& l) { got.insert(l); }, [](const std::string&) {}, false)
                     : 2;
    bool ok = status == want_status && got == want_lines;
    std::printf("%-4s parallel_file_search%s -> exit %d, %zu hits\n", ok ? "ok" : "FAIL", joined.c_str(), status,
                got.size());
    if (!ok) {
      ++failures;
      std::printf("     expected exit %d with %zu hits\n", want_status, want_lines.size());
    }
  };
  run({"-n", "needle", root}, 0, want_plain);
  run({"-n", "-i", "needle", root}, 0, want_icase);
  run({"-nE", "-j", "3", "ne+dle", root}, 0, want_regex);
  run({"-n", "-j", "1", "needle", root + "/a/one.txt"}, 0, {root + "/a/one.txt:2:needle here"});
  run({"needle", root + "/a/one.txt"}, 0, {root + "/a/one.txt:needle here"});
  run({"no such text", root}, 1, {});
  run({"needle", root + "/does-not-exist"}, 2, {});
  run({"-E", "(unclosed", root}, 2, {});
  run({"-x", "needle"}, 2, {});
  run({}, 2, {});
  std::printf("self-test: %s\n", failures == 0 ? "all checks passed" : "FAILED");
  return failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--") break;
    if (arg == "--help" || arg == "-h") {
      usage(stdout);
      return 0;
    }
    if (arg == "--self-test") return self_test();
  }
  auto opt = parse(argc, argv);
  if (!opt) return 2;
  const bool progress = ::isatty(2) && ::isatty(1);
  return search(
      *opt, [](const std::string& line) { std::printf("%s\n", line.c_str()); },
      [](const std::string& message) { std::fprintf(stderr, "parallel_file_search: %s\n", message.c_str()); },
      progress);
}
