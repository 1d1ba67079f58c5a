// The lesson's challenge "Create a multiprocessing-based web scraper": a breadth-first crawler whose pages are
// fetched by an mp::Pool of processes, over a small web site this program serves itself on 127.0.0.1.
//
//   server    cpp-httplib in a process of its own (mp::Process), on a port the system picks; stopped by an
//             mp::Event. Its pages link to each other, to a page that answers too late, to a page that does not
//             exist and to two sites outside this machine.
//   fetching  libcurl in the pool's worker processes: one request per task, a per-request timeout, no redirects
//             followed, no proxy; the links of each page are extracted with gumbo in the worker too.
//   crawling  the parent walks the site level by level (breadth-first) to a depth limit, sending each level's new
//             URLs to the pool; the pool's size is the concurrency limit. A report at the end: pages, links, bytes,
//             errors.
//
// It never reaches an address outside loopback: a URL whose host is not 127.x.x.x, [::1] or localhost is refused
// before any request (and reported as refused), and the socket libcurl opens is checked once more, so a name that
// resolves elsewhere is refused too.
//
// Usage: web_scraper [--depth N] [--concurrency N] [--timeout-ms N] [--self-test] [URL]
//   without URL it serves its own site and crawls it; a URL must be on loopback (anything else is refused).
//   --self-test: crawls its own site and checks the crawled graph against the site it served (every page reached
//   within the depth limit with its links, the slow page as a timeout, the missing page as HTTP 404, the outside
//   links refused, nothing beyond the depth limit), and checks the loopback guard on tricky URLs; exits 1 on any
//   difference.
#include <mp/pool.hpp>
#include <mp/process.hpp>
#include <mp/queue.hpp>
#include <mp/sync.hpp>

#include <arpa/inet.h>
#include <curl/curl.h>
#include <gumbo.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <csignal>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

// ---------------------------------------------------------------------------------------------------------------
// The site: path -> the links its page holds (as written in the HTML: absolute, root-relative, relative, …).

struct page_spec {
  std::string path;
  std::vector<std::string> links;
};

const std::vector<page_spec>& site() {
  static const std::vector<page_spec> pages = {
      {"/", {"/about", "blog/", "/missing", "/slow", "http://example.com/", "#top"}},
      {"/about", {"/", "team", "mailto:team@example.com"}},
      {"/team", {"/about", "https://www.python.org/"}},
      {"/blog/", {"post1", "post2", "/"}},
      {"/blog/post1", {"/blog/", "post2", "archive/"}},
      {"/blog/post2", {"../blog/post1", "/blog/post2#comments"}},
      {"/blog/archive/", {"2020", "/blog/"}},
      {"/blog/archive/2020", {"/"}},  // depth 4: beyond the default depth limit of 3
  };
  return pages;
}

constexpr const char* slow_path = "/slow";  // answers after 3 s: longer than the per-request timeout

std::string page_html(const page_spec& page) {
  std::string html = "<!DOCTYPE html><html><head><title>" + page.path + "</title></head><body><h1>" + page.path +
                     "</h1><ul>";
  for (const std::string& link : page.links) html += "<li><a href=\"" + link + "\">" + link + "</a></li>";
  return html + "</ul></body></html>";
}

/// The server process: serves site() on 127.0.0.1, puts its port on `ports`, stops when `stop` is set.
void serve_site(mp::Queue<int> ports, mp::Event stop) {
  std::signal(SIGPIPE, SIG_IGN);  // a client that gave up (the timed-out request) must not kill the server
  httplib::Server server;
  for (const page_spec& page : site()) {
    server.Get(page.path, [&page](const httplib::Request&, httplib::Response& response) {
      response.set_content(page_html(page), "text/html");
    });
  }
  server.Get(slow_path, [stop](const httplib::Request&, httplib::Response& response) mutable {
    (void)stop.wait(std::chrono::seconds(3));  // late, but never later than the server's stop
    response.set_content("<html><body>too late</body></html>", "text/html");
  });
  const int port = server.bind_to_any_port("127.0.0.1");
  ports.put(port);
  if (port < 0) return;
  std::thread stopper([&] {
    stop.wait();
    server.stop();
  });
  server.listen_after_bind();
  stopper.join();
}

// ---------------------------------------------------------------------------------------------------------------
// URLs: only http://<loopback host>[:port]/path is ever fetched.

struct url_parts {
  std::string scheme, host, port, path;  // host without brackets; path starts with '/'
};

/// Splits an absolute http(s) URL; empty for anything else (mailto:, javascript:, relative, malformed).
std::optional<url_parts> split_url(std::string_view url) {
  url_parts parts;
  const auto colon = url.find("://");
  if (colon == std::string_view::npos) return std::nullopt;
  parts.scheme = std::string(url.substr(0, colon));
  std::transform(parts.scheme.begin(), parts.scheme.end(), parts.scheme.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (parts.scheme != "http" && parts.scheme != "https") return std::nullopt;
  std::string_view rest = url.substr(colon + 3);
  const auto slash = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, slash);
  parts.path = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
  if (authority.find('@') != std::string_view::npos) return std::nullopt;  // user@host: refused, never guessed
  if (!authority.empty() && authority.front() == '[') {
    const auto close = authority.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    parts.host = std::string(authority.substr(1, close - 1));
    authority.remove_prefix(close + 1);
    if (!authority.empty() && authority.front() != ':') return std::nullopt;
    if (!authority.empty()) parts.port = std::string(authority.substr(1));
  } else {
    const auto port_colon = authority.find(':');
    parts.host = std::string(authority.substr(0, port_colon));
    if (port_colon != std::string_view::npos) parts.port = std::string(authority.substr(port_colon + 1));
  }
  std::transform(parts.host.begin(), parts.host.end(), parts.host.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (parts.host.empty()) return std::nullopt;
  if (!parts.port.empty() && (parts.port.size() > 5 || parts.port.find_first_not_of("0123456789") != std::string::npos)) {
    return std::nullopt;
  }
  if (parts.path.front() != '/') parts.path.insert(0, "/");
  return parts;
}

bool is_loopback_address(const sockaddr* address) {
  if (address->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(address);
    return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
  }
  if (address->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(address);
    return IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr) != 0;
  }
  return false;
}

/// True for a URL this crawler may fetch: http, and a host that is a loopback address written as such (127.0.0.0/8
/// in dotted decimal, ::1) or "localhost". Names are not resolved here; the socket check below covers them.
bool is_loopback_url(std::string_view url) {
  const auto parts = split_url(url);
  if (!parts || parts->scheme != "http") return false;
  if (parts->host == "localhost") return true;
  in_addr v4{};
  if (::inet_pton(AF_INET, parts->host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (::inet_pton(AF_INET6, parts->host.c_str(), &v6) == 1) return IN6_IS_ADDR_LOOPBACK(&v6) != 0;
  return false;
}

/// Removes "." and ".." segments of an absolute path (RFC 3986, 5.2.4).
std::string remove_dot_segments(const std::string& path) {
  std::vector<std::string> segments;
  std::size_t start = 1;
  while (start <= path.size()) {
    const auto end = std::min(path.find('/', start), path.size());
    const std::string segment = path.substr(start, end - start);
    if (segment == "..") {
      if (!segments.empty()) segments.pop_back();
      if (end == path.size()) segments.emplace_back();
    } else if (segment == ".") {
      if (end == path.size()) segments.emplace_back();
    } else {
      segments.push_back(segment);
    }
    start = end + 1;
  }
  std::string out;
  for (const std::string& segment : segments) out += "/" + segment;
  return out.empty() ? "/" : out;
}

/// `href` of a page at `base` as an absolute URL without its fragment; empty for links that are not http(s).
std::string resolve(const std::string& base, std::string href) {
  href = href.substr(0, href.find('#'));
  if (href.empty()) return "";  // "#top": the same page
  if (href.find("://") != std::string::npos) return split_url(href) ? href : "";
  const auto scheme_end = href.find(':');
  if (scheme_end != std::string::npos && href.find('/') > scheme_end) return "";  // mailto:, javascript:, …
  const auto b = split_url(base);
  if (!b) return "";
  const std::string origin = b->scheme + "://" + (b->host.find(':') != std::string::npos ? "[" + b->host + "]" : b->host) +
                             (b->port.empty() ? "" : ":" + b->port);
  if (href.rfind("//", 0) == 0) return b->scheme + ":" + href;
  std::string path;
  if (href.front() == '/') {
    path = href;
  } else {
    const std::string base_path = b->path.substr(0, b->path.find_first_of("?#"));
    path = base_path.substr(0, base_path.rfind('/') + 1) + href;
  }
  const auto query = path.find('?');
  const std::string tail = query == std::string::npos ? "" : path.substr(query);
  return origin + remove_dot_segments(path.substr(0, query)) + tail;
}

// ---------------------------------------------------------------------------------------------------------------
// Fetching, in the pool's worker processes.

struct fetch_result {
  std::string url;
  long status = 0;                 // HTTP status; 0 when no response came
  std::string error;               // empty on success; "timeout …", "HTTP 404", "refused …", curl's message
  std::uint64_t bytes = 0;         // body bytes received
  std::vector<std::string> links;  // absolute URLs, in page order, duplicates kept

  template <class Archive>
  void serialize(Archive& ar) {
    ar(url, status, error, bytes, links);
  }
};

struct request {
  std::string url;
  long timeout_ms = 0;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(url, timeout_ms);
  }
};

std::size_t append_body(char* data, std::size_t size, std::size_t count, void* body) {
  static_cast<std::string*>(body)->append(data, size * count);
  return size * count;
}

/// libcurl's socket hook: the last line of defence. Whatever a name resolved to, only a loopback address gets a
/// socket; anything else fails the request.
curl_socket_t open_loopback_socket(void*, curlsocktype, curl_sockaddr* address) {
  if (!is_loopback_address(&address->addr)) return CURL_SOCKET_BAD;
  return ::socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
}

void collect_links(const GumboNode* node, const std::string& base, std::vector<std::string>& links) {
  if (node->type != GUMBO_NODE_ELEMENT) return;
  if (node->v.element.tag == GUMBO_TAG_A) {
    if (const GumboAttribute* href = gumbo_get_attribute(&node->v.element.attributes, "href")) {
      std::string url = resolve(base, href->value);
      if (!url.empty()) links.push_back(std::move(url));
    }
  }
  const GumboVector& children = node->v.element.children;
  for (unsigned i = 0; i < children.length; ++i) {
    collect_links(static_cast<const GumboNode*>(children.data[i]), base, links);
  }
}

/// The pool task: one GET with a timeout, then the page's links.
fetch_result fetch(const request& req) {
  fetch_result result;
  result.url = req.url;
  if (!is_loopback_url(req.url)) {
    result.error = "refused: not a loopback URL";
    return result;
  }
  CURL* curl = curl_easy_init();
  if (curl == nullptr) {
    result.error = "curl_easy_init failed";
    return result;
  }
  std::string body;
  curl_easy_setopt(curl, CURLOPT_URL, req.url.c_str());
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http");
  curl_easy_setopt(curl, CURLOPT_NOPROXY, "*");  // a proxy from the environment would be a non-loopback hop
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(curl, CURLOPT_OPENSOCKETFUNCTION, open_loopback_socket);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, req.timeout_ms);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, append_body);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
  const CURLcode code = curl_easy_perform(curl);
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &result.status);
  curl_easy_cleanup(curl);
  result.bytes = body.size();
  if (code == CURLE_OPERATION_TIMEDOUT) {
    result.error = "timeout after " + std::to_string(req.timeout_ms) + " ms";
  } else if (code == CURLE_COULDNT_CONNECT && result.status == 0) {
    result.error = std::string("could not connect: ") + curl_easy_strerror(code);
  } else if (code != CURLE_OK) {
    result.error = curl_easy_strerror(code);
  } else if (result.status != 200) {
    result.error = "HTTP " + std::to_string(result.status);
  } else {
    GumboOutput* html = gumbo_parse_with_options(&kGumboDefaultOptions, body.data(), body.size());
    collect_links(html->root, req.url, result.links);
    gumbo_destroy_output(&kGumboDefaultOptions, html);
  }
  return result;
}

// ---------------------------------------------------------------------------------------------------------------
// Crawling, in the parent.

struct crawl_options {
  int max_depth = 3;
  std::size_t concurrency = 4;
  long timeout_ms = 500;
};

struct crawl_report {
  std::map<std::string, fetch_result> fetched;  // every URL requested, with its outcome
  std::map<std::string, int> depth;             // depth at which each URL was first seen
  std::set<std::string> refused;                // links never requested: not on loopback
  std::set<std::string> beyond_depth;           // links seen but past the depth limit
};

crawl_report crawl(const std::string& start, const crawl_options& options) {
  crawl_report report;
  mp::Pool pool(options.concurrency);  // the concurrency limit: at most this many requests at a time
  std::vector<std::string> level{start};
  report.depth[start] = 0;
  for (int depth = 0; !level.empty(); ++depth) {
    std::vector<request> requests;
    for (const std::string& url : level) requests.push_back({url, options.timeout_ms});
    std::vector<std::string> next;
    // imap_unordered, one URL per task: a slow page holds one worker, not a chunk of other pages.
    for (const fetch_result& result : pool.imap_unordered(fetch, requests, 1)) {
      for (const std::string& link : result.links) {
        if (report.depth.count(link) != 0 || report.refused.count(link) != 0) continue;
        if (!is_loopback_url(link)) {
          report.refused.insert(link);
        } else if (depth + 1 > options.max_depth) {
          report.beyond_depth.insert(link);
        } else {
          report.depth[link] = depth + 1;
          next.push_back(link);
        }
      }
      report.fetched.emplace(result.url, result);
    }
    std::sort(next.begin(), next.end());
    level = std::move(next);
  }
  return report;
}

void print_report(const crawl_report& report, const crawl_options& options) {
  std::size_t pages = 0, links = 0, errors = 0;
  std::uint64_t bytes = 0;
  std::vector<std::pair<int, std::string>> order;  // breadth-first: by depth, then URL
  for (const auto& [url, result] : report.fetched) order.emplace_back(report.depth.at(url), url);
  std::sort(order.begin(), order.end());
  for (const auto& [depth, url] : order) {
    const fetch_result& result = report.fetched.at(url);
    std::printf("  depth %d  %-45s %s", depth, url.c_str(),
                result.error.empty() ? "ok" : result.error.c_str());
    if (result.error.empty()) std::printf(", %llu bytes, %zu links", static_cast<unsigned long long>(result.bytes),
                                          result.links.size());
    std::printf("\n");
    pages += result.error.empty();
    errors += !result.error.empty();
    links += result.links.size();
    bytes += result.bytes;
  }
  for (const std::string& url : report.refused) std::printf("  refused  %s (not on loopback: never requested)\n", url.c_str());
  for (const std::string& url : report.beyond_depth) std::printf("  not followed  %s (beyond depth %d)\n", url.c_str(), options.max_depth);
  std::printf("report: %zu pages, %zu links, %llu bytes, %zu errors, %zu refused, %zu beyond the depth limit "
              "(depth limit %d, %zu concurrent requests, timeout %ld ms)\n",
              pages, links, static_cast<unsigned long long>(bytes), errors, report.refused.size(),
              report.beyond_depth.size(), options.max_depth, options.concurrency, options.timeout_ms);
}

// ---------------------------------------------------------------------------------------------------------------
// The self-test: the crawled graph against the served site.

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "web_scraper self-test: FAILED: %s\n", what.c_str());
    ++failures;
  }
}

/// Breadth-first over site() itself (no network): the depth of every URL the crawl should request.
std::map<std::string, int> expected_depths(const std::string& origin, int max_depth, std::set<std::string>& beyond,
                                           std::set<std::string>& refused) {
  std::map<std::string, const page_spec*> by_url;
  for (const page_spec& page : site()) by_url[origin + page.path] = &page;
  std::map<std::string, int> depth{{origin + "/", 0}};
  std::vector<std::string> level{origin + "/"};
  for (int d = 0; !level.empty(); ++d) {
    std::vector<std::string> next;
    for (const std::string& url : level) {
      const auto page = by_url.find(url);
      if (page == by_url.end()) continue;  // /slow and /missing have no links
      for (const std::string& href : page->second->links) {
        const std::string link = resolve(url, href);
        if (link.empty() || depth.count(link) != 0) continue;
        if (!is_loopback_url(link)) {
          refused.insert(link);
          continue;
        }
        if (d + 1 > max_depth) {
          beyond.insert(link);
          continue;
        }
        depth[link] = d + 1;
        next.push_back(link);
      }
    }
    level = std::move(next);
  }
  return depth;
}

void self_test(const crawl_report& report, const std::string& origin, const crawl_options& options) {
  // The loopback guard.
  for (const char* url : {"http://127.0.0.1/", "http://127.1.2.3:8080/x", "http://localhost:80/", "http://[::1]:8/"}) {
    expect(is_loopback_url(url), std::string("loopback URL accepted: ") + url);
  }
  for (const char* url : {"http://example.com/", "http://10.0.0.1/", "http://127.0.0.1.example.com/",
                          "http://localhost@example.com/", "http://127.0.0.1@10.0.0.1/", "http://[::ffff:8.8.8.8]/",
                          "http://0.0.0.0/", "https://127.0.0.1/", "ftp://127.0.0.1/", "file:///etc/passwd",
                          "http://2130706433/", "http://[::1/", "http://127.0.0.1:99999999/"}) {
    expect(!is_loopback_url(url), std::string("URL outside the accepted loopback forms refused: ") + url);
    const fetch_result direct = fetch({url, 200});
    expect(direct.error.rfind("refused", 0) == 0 && direct.bytes == 0,
           std::string("fetch() refuses ") + url + " without a request (got '" + direct.error + "')");
  }

  // The socket hook, for names that resolve: a socket for a loopback address only.
  for (const char* address : {"127.0.0.1", "8.8.8.8", "10.1.2.3"}) {
    curl_sockaddr target{};
    target.family = AF_INET;
    target.socktype = SOCK_STREAM;
    target.protocol = IPPROTO_TCP;
    target.addrlen = sizeof(sockaddr_in);
    auto* in = reinterpret_cast<sockaddr_in*>(&target.addr);
    in->sin_family = AF_INET;
    ::inet_pton(AF_INET, address, &in->sin_addr);
    const curl_socket_t fd = open_loopback_socket(nullptr, CURLSOCKTYPE_IPCXN, &target);
    const bool loopback = std::string_view(address) == "127.0.0.1";
    expect((fd != CURL_SOCKET_BAD) == loopback,
           std::string("the socket hook ") + (loopback ? "opens a socket for " : "refuses ") + address);
    if (fd != CURL_SOCKET_BAD) ::close(fd);
  }

  // The graph: exactly the URLs within the depth limit were requested, each at its breadth-first depth.
  std::set<std::string> beyond, refused;
  const std::map<std::string, int> want = expected_depths(origin, options.max_depth, beyond, refused);
  std::map<std::string, int> got;
  for (const auto& [url, result] : report.fetched) got[url] = report.depth.at(url);
  expect(got == want, "the crawled URLs and depths are those of the served site");
  expect(report.beyond_depth == beyond, "the links beyond the depth limit are the site's, and none was requested");
  for (const std::string& url : beyond) expect(report.fetched.count(url) == 0, url + " (beyond the limit) not requested");

  // Each page's links, resolved, are the links the site wrote into it.
  for (const page_spec& page : site()) {
    const auto it = report.fetched.find(origin + page.path);
    if (it == report.fetched.end()) continue;
    std::vector<std::string> links;
    for (const std::string& href : page.links) {
      if (std::string link = resolve(origin + page.path, href); !link.empty()) links.push_back(link);
    }
    expect(it->second.error.empty(), page.path + " fetched without error (got '" + it->second.error + "')");
    expect(it->second.links == links, page.path + ": the extracted links are the page's links");
    expect(it->second.bytes == page_html(page).size(), page.path + ": all its bytes arrived");
  }

  // The outside links were refused; the slow page timed out and the missing one is a broken link.
  expect(report.refused == refused, "the outside links are refused, never requested");
  if (options.max_depth < 1) return;
  const auto slow = report.fetched.find(origin + slow_path);
  expect(slow != report.fetched.end() && slow->second.error.rfind("timeout", 0) == 0,
         "/slow ends in a timeout after " + std::to_string(options.timeout_ms) + " ms");
  const auto missing = report.fetched.find(origin + "/missing");
  expect(missing != report.fetched.end() && missing->second.status == 404 && missing->second.error == "HTTP 404",
         "/missing is a broken link (HTTP 404)");
  if (options.max_depth >= 2) {
    expect(refused == std::set<std::string>{"http://example.com/", "https://www.python.org/"},
           "the site links to two outside pages");
  }
}

long parse_number(const char* flag, const char* text, long lo, long hi) {
  char* end = nullptr;
  const long value = text != nullptr ? std::strtol(text, &end, 10) : 0;
  if (text == nullptr || *end != '\0' || value < lo || value > hi) {
    std::fprintf(stderr, "web_scraper: %s needs a number in %ld..%ld\n", flag, lo, hi);
    std::exit(2);
  }
  return value;
}

}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);

  crawl_options options;
  bool run_self_test = false;
  std::string start;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
    if (arg == "--self-test") {
      run_self_test = true;
    } else if (arg == "--depth") {
      options.max_depth = static_cast<int>(parse_number(argv[i], value, 0, 100));
      ++i;
    } else if (arg == "--concurrency") {
      options.concurrency = static_cast<std::size_t>(parse_number(argv[i], value, 1, 64));
      ++i;
    } else if (arg == "--timeout-ms") {
      options.timeout_ms = parse_number(argv[i], value, 1, 600'000);
      ++i;
    } else if (arg == "-h" || arg == "--help") {
      std::puts("usage: web_scraper [--depth N] [--concurrency N] [--timeout-ms N] [--self-test] [URL]");
      return 0;
    } else if (!arg.empty() && arg.front() != '-' && start.empty()) {
      start = std::string(arg);
    } else {
      std::fprintf(stderr, "web_scraper: unknown argument '%s'\n", argv[i]);
      return 2;
    }
  }
  if (!start.empty()) {
    if (run_self_test) {
      std::fprintf(stderr, "web_scraper: --self-test crawls its own site; give no URL\n");
      return 2;
    }
    if (!is_loopback_url(start)) {
      std::fprintf(stderr, "web_scraper: refused %s: only http:// URLs on loopback (127.0.0.0/8, [::1], localhost) "
                           "are crawled\n", start.c_str());
      return 2;
    }
    print_report(crawl(start, options), options);
    return 0;
  }

  // Serve the site in a process of its own, and crawl it.
  mp::Queue<int> ports;
  mp::Event stop;
  mp::Process server({.name = "site-server"}, serve_site, ports, stop);
  server.start();
  const int port = ports.get(std::chrono::seconds(10));
  if (port < 0) {
    std::fprintf(stderr, "web_scraper: the site server could not bind to 127.0.0.1\n");
    return 1;
  }
  const std::string origin = "http://127.0.0.1:" + std::to_string(port);
  std::printf("serving %zu pages and %s on 127.0.0.1 (port chosen by the system); crawling from /\n", site().size(),
              slow_path);
  const auto t0 = std::chrono::steady_clock::now();
  const crawl_report report = crawl(origin + "/", options);
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - t0;
  stop.set();
  server.join();

  // Print paths, not the port, so runs compare.
  crawl_report shown;
  auto strip = [&](const std::string& url) { return url.rfind(origin, 0) == 0 ? url.substr(origin.size()) : url; };
  for (const auto& [url, result] : report.fetched) {
    fetch_result copy = result;
    copy.url = strip(url);
    for (std::string& link : copy.links) link = strip(link);
    shown.fetched.emplace(strip(url), std::move(copy));
    shown.depth[strip(url)] = report.depth.at(url);
  }
  shown.refused = report.refused;
  for (const std::string& url : report.beyond_depth) shown.beyond_depth.insert(strip(url));
  print_report(shown, options);
  std::printf("crawled in %.2f s; server exit code %d\n", took.count(), server.exitcode().value_or(-1));

  if (run_self_test) {
    self_test(report, origin, options);
    expect(server.exitcode() == 0, "the server process ended cleanly");
    std::printf("self-test: %s\n", failures == 0 ? "the crawled graph matches the served site" : "FAILED");
    return failures == 0 ? 0 : 1;
  }
  return 0;
}
