// The report: SVG charts and the HTML page are well-formed XML (checked by a
// small parser here, and by python3's xml.dom.minidom when available), draw
// one polyline per domain, escape every name, thin long series; the page
// holds all charts and the table values; metrics.jsonl is read with errors
// that name the file and line.
#include <doctest/doctest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "doremi/eval/report.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using namespace doremi;

namespace {

using doremi::test::read_bytes;
using doremi::test::write_bytes;

std::size_t count(std::string_view hay, std::string_view needle) {
  std::size_t n = 0;
  for (std::size_t at = hay.find(needle); at != std::string_view::npos; at = hay.find(needle, at + needle.size())) ++n;
  return n;
}

// A strict little XML well-formedness checker: one root element, matched
// tags, quoted attributes without '<', no duplicate attributes, only the five
// predefined or numeric entities, no stray '&' or '<' in text. Understands the
// prolog parts this library writes (<!DOCTYPE html>, comments, <?xml ?>).
// Returns "" when well-formed, else what is wrong and where.
std::string xml_problem(std::string_view s) {
  std::vector<std::string> stack;
  bool root_seen = false;
  std::size_t i = 0;
  auto name_char = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == ':' || c == '.';
  };
  auto check_entities = [&](std::string_view text, std::size_t at) -> std::string {
    for (std::size_t p = text.find('&'); p != std::string_view::npos; p = text.find('&', p + 1)) {
      const std::size_t semi = text.find(';', p);
      if (semi == std::string_view::npos) return "unterminated entity at " + std::to_string(at + p);
      const std::string_view ent = text.substr(p + 1, semi - p - 1);
      const bool named = ent == "amp" || ent == "lt" || ent == "gt" || ent == "quot" || ent == "apos";
      bool numeric = ent.size() > 1 && ent[0] == '#';
      for (std::size_t q = 1; numeric && q < ent.size(); ++q)
        numeric = std::isxdigit(static_cast<unsigned char>(ent[q])) || (q == 1 && ent[q] == 'x');
      if (!named && !numeric) return "bad entity &" + std::string(ent) + "; at " + std::to_string(at + p);
    }
    return "";
  };
  while (i < s.size()) {
    const std::size_t lt = s.find('<', i);
    const std::string_view text = s.substr(i, lt == std::string_view::npos ? std::string_view::npos : lt - i);
    if (auto e = check_entities(text, i); !e.empty()) return e;
    if (stack.empty() && text.find_first_not_of(" \t\r\n") != std::string_view::npos)
      return "text outside the root element at " + std::to_string(i);
    if (lt == std::string_view::npos) break;
    i = lt;
    if (s.substr(i, 4) == "<!--") {
      const std::size_t end = s.find("-->", i);
      if (end == std::string_view::npos) return "unterminated comment";
      i = end + 3;
      continue;
    }
    if (s.substr(i, 2) == "<?" || s.substr(i, 2) == "<!") {
      if (root_seen) return "declaration after the root element at " + std::to_string(i);
      const std::size_t end = s.find('>', i);
      if (end == std::string_view::npos) return "unterminated declaration";
      i = end + 1;
      continue;
    }
    const bool closing = s.substr(i, 2) == "</";
    std::size_t p = i + (closing ? 2 : 1);
    const std::size_t name_start = p;
    while (p < s.size() && name_char(s[p])) ++p;
    const std::string name(s.substr(name_start, p - name_start));
    if (name.empty()) return "tag without a name at " + std::to_string(i);
    if (closing) {
      while (p < s.size() && std::isspace(static_cast<unsigned char>(s[p]))) ++p;
      if (p >= s.size() || s[p] != '>') return "malformed end tag </" + name + " at " + std::to_string(i);
      if (stack.empty() || stack.back() != name)
        return "</" + name + "> at " + std::to_string(i) + " closes <" + (stack.empty() ? "" : stack.back()) + ">";
      stack.pop_back();
      i = p + 1;
      continue;
    }
    if (stack.empty() && root_seen) return "second root element <" + name + "> at " + std::to_string(i);
    root_seen = true;
    std::vector<std::string> attrs;
    for (;;) {
      const std::size_t before = p;
      while (p < s.size() && std::isspace(static_cast<unsigned char>(s[p]))) ++p;
      if (p >= s.size()) return "unterminated tag <" + name + ">";
      if (s[p] == '>' || s.substr(p, 2) == "/>") break;
      if (p == before) return "no space before an attribute of <" + name + "> at " + std::to_string(p);
      const std::size_t an = p;
      while (p < s.size() && name_char(s[p])) ++p;
      const std::string attr(s.substr(an, p - an));
      if (attr.empty() || p >= s.size() || s[p] != '=')
        return "malformed attribute in <" + name + "> at " + std::to_string(an);
      for (const auto& a : attrs)
        if (a == attr) return "duplicate attribute " + attr + " in <" + name + ">";
      attrs.push_back(attr);
      ++p;
      if (p >= s.size() || (s[p] != '"' && s[p] != '\'')) return "unquoted attribute " + attr + " in <" + name + ">";
      const char q = s[p];
      const std::size_t close = s.find(q, p + 1);
      if (close == std::string_view::npos) return "unterminated attribute " + attr;
      const std::string_view value = s.substr(p + 1, close - p - 1);
      if (value.find('<') != std::string_view::npos) return "'<' in attribute " + attr + " of <" + name + ">";
      if (auto e = check_entities(value, p + 1); !e.empty()) return e;
      p = close + 1;
    }
    if (s[p] == '/') {
      i = p + 2;
    } else {
      stack.push_back(name);
      i = p + 1;
    }
  }
  if (!stack.empty()) return "unclosed <" + stack.back() + ">";
  if (!root_seen) return "no root element";
  return "";
}

// Whether python3's XML parser accepts all the files; nullopt when python3
// is unavailable. One python run for all (starting python is the slow part).
std::optional<bool> python_parses(const std::vector<fs::path>& files) {
  static const bool have_python = std::system("python3 -c pass >/dev/null 2>&1") == 0;
  if (!have_python) return std::nullopt;
  std::string cmd = "python3 -c \"import xml.dom.minidom,sys; [xml.dom.minidom.parse(f) for f in sys.argv[1:]]\"";
  for (const auto& f : files) cmd += " '" + f.string() + "'";
  return std::system(cmd.c_str()) == 0;  // python's error, naming the problem, goes to stderr
}

void check_well_formed(const std::vector<fs::path>& files) {
  for (const auto& file : files) {
    INFO(file.string());
    CHECK(xml_problem(read_bytes(file)) == "");
  }
  if (const auto ok = python_parses(files)) CHECK(*ok);
  else MESSAGE("python3 is unavailable: the files were checked by the test's own XML parser only");
}

const std::vector<std::string> pile{"ArXiv",
                                    "BookCorpus2",
                                    "Books3",
                                    "DM Mathematics",
                                    "Enron Emails",
                                    "EuroParl",
                                    "FreeLaw",
                                    "Github",
                                    "Gutenberg (PG-19)",
                                    "HackerNews",
                                    "NIH ExPorter",
                                    "OpenSubtitles",
                                    "OpenWebText2",
                                    "PhilPapers",
                                    "Pile-CC",
                                    "PubMed Abstracts",
                                    "PubMed Central",
                                    "StackExchange",
                                    "USPTO Backgrounds",
                                    "Ubuntu IRC",
                                    "Wikipedia (en)",
                                    "<b>&"};

// A smooth, deterministic trajectory on the simplex: [steps][k].
std::vector<std::vector<double>> trajectory(std::size_t steps, std::size_t k) {
  std::vector<std::vector<double>> m(steps, std::vector<double>(k));
  for (std::size_t s = 0; s < steps; ++s) {
    double z = 0;
    for (std::size_t i = 0; i < k; ++i)
      z += m[s][i] = std::exp(std::sin(0.001 * double(s) * double(i + 1)) + 0.1 * double(i));
    for (double& v : m[s]) v /= z;
  }
  return m;
}

std::vector<std::string> polylines_points(const std::string& svg) {
  std::vector<std::string> out;
  for (std::size_t at = svg.find("<polyline"); at != std::string::npos; at = svg.find("<polyline", at + 1)) {
    const std::size_t p = svg.find("points=\"", at) + 8;
    out.push_back(svg.substr(p, svg.find('"', p) - p));
  }
  return out;
}

}  // namespace

TEST_CASE("report: the test's XML checker rejects broken markup") {
  CHECK(xml_problem("<a><b x=\"1\"/>t &amp; &#x3C; &#60;</a>") == "");
  CHECK(xml_problem("<a><b></a></b>") != "");
  CHECK(xml_problem("<a>x & y</a>") != "");
  CHECK(xml_problem("<a x=\"<\"/>") != "");
  CHECK(xml_problem("<a x=1/>") != "");
  CHECK(xml_problem("<a/><b/>") != "");
  CHECK(xml_problem("<a x=\"1\" x=\"2\"/>") != "");
  CHECK(xml_problem("<a>&nbsp;</a>") != "");
  CHECK(xml_problem("<a>") != "");
}

TEST_CASE("report: xml_escape makes any text safe") {
  CHECK(xml_escape("<b>&\"'") == "&lt;b&gt;&amp;&quot;&#39;");
  CHECK(xml_escape("Gutenberg (PG-19)") == "Gutenberg (PG-19)");
  CHECK(xml_escape("caf\xc3\xa9 \xe2\x86\x92 \xf0\x9f\x98\x80") ==
        "caf\xc3\xa9 \xe2\x86\x92 \xf0\x9f\x98\x80");  // kept
  CHECK(xml_escape("a\x01"
                   "b") ==
        "a\xef\xbf\xbd"
        "b");  // control character
  CHECK(xml_escape("a\xff"
                   "b") ==
        "a\xef\xbf\xbd"
        "b");                                                                   // not UTF-8
  CHECK(xml_escape("\xc3") == "\xef\xbf\xbd");                                  // truncated sequence
  CHECK(xml_escape("\xc0\xaf") == "\xef\xbf\xbd\xef\xbf\xbd");                  // overlong '/'
  CHECK(xml_escape("\xed\xa0\x80") == "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");  // surrogate
  CHECK(xml_escape("tab\tnew\nline") == "tab\tnew\nline");
  CHECK(report_detail::utf8_shorten("abcdefgh", 5) == "abcd\xe2\x80\xa6");
  CHECK(report_detail::utf8_shorten("\xc3\xa9\xc3\xa9\xc3\xa9", 2) == "\xc3\xa9\xe2\x80\xa6");  // whole characters
  CHECK(report_detail::utf8_shorten("abc", 3) == "abc");
}

TEST_CASE("report: svg_line_chart draws one polyline per domain with an escaped legend") {
  test::TempDir dir("report");
  const std::size_t n = 5000, k = pile.size();
  std::vector<long> steps(n);
  for (std::size_t s = 0; s < n; ++s) steps[s] = long(s) + 1;
  const auto m = trajectory(n, k);
  LineChartOptions o;
  o.title = "weights & <things>";
  o.guide = 1.0 / double(k);
  o.guide_label = "uniform";
  const std::string svg = svg_line_chart(steps, m, pile, o);
  SUBCASE("well-formed XML") {
    write_bytes(dir.path / "line.svg", svg);
    check_well_formed({dir.path / "line.svg"});
  }

  const auto lines = polylines_points(svg);
  REQUIRE(lines.size() == k);
  for (const auto& pts : lines) {
    const std::size_t points = count(pts, ",");
    CHECK(points <= o.max_points + 2);  // 5000 steps thinned
    CHECK(points >= o.max_points / 2);
  }
  CHECK(svg.find("&lt;b&gt;&amp;") != std::string::npos);
  CHECK(svg.find("<b>&") == std::string::npos);
  CHECK(svg.find("Gutenberg (PG-19)") != std::string::npos);
  CHECK(svg.find("weights &amp; &lt;things&gt;") != std::string::npos);
  for (const auto& name : pile) CHECK(svg.find(fmt::format(">{}<", xml_escape(name))) != std::string::npos);
  CHECK(svg.find(">5000<") != std::string::npos);  // step ticks
  CHECK(svg.find(">uniform<") != std::string::npos);

  SUBCASE("few steps are drawn as they are, non-finite values left out") {
    std::vector<std::vector<double>> few{{0.5, 0.5}, {0.6, std::nan("")}, {0.7, 0.3}};
    const std::string s2 = svg_line_chart({10, 20, 30}, few, {"a", "b"});
    const auto l2 = polylines_points(s2);
    REQUIRE(l2.size() == 2);
    CHECK(count(l2[0], ",") + count(l2[1], ",") == 5);
    CHECK(xml_problem(s2) == "");
  }
  SUBCASE("no steps and a log axis still give a valid chart") {
    CHECK(xml_problem(svg_line_chart({}, {}, {"a", "b"})) == "");
    LineChartOptions lo;
    lo.log_y = true;
    const std::string s3 = svg_line_chart({1, 2}, {{0.001, 0.0}, {0.01, 0.5}}, {"a", "b"}, lo);
    CHECK(xml_problem(s3) == "");
    CHECK(s3.find(">0.001<") != std::string::npos);
    CHECK(s3.find(">1<") != std::string::npos);
  }
  SUBCASE("mismatched shapes are errors") {
    CHECK_THROWS_AS(svg_line_chart({1, 2}, {{0.5, 0.5}}, {"a", "b"}), Error);
    CHECK_THROWS_WITH_AS(svg_line_chart({1}, {{0.5}}, {"a", "b"}), doctest::Contains("row 0 (step 1)"), Error);
  }
}

TEST_CASE("report: thinning keeps trends (mean) or spikes (min_max)") {
  const std::size_t n = 10000;
  std::vector<double> x(n), y(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = double(i), y[i] = (i % 2 ? 1.0 : 0.0);
  y[4321] = 50;  // one spike
  const auto mean = report_detail::thin(x, y, 100, Thinning::mean);
  CHECK(mean.size() == 100);
  double top = 0;
  for (const auto& [px, py] : mean) top = std::max(top, py);
  CHECK(top < 1.0);  // the alternation averages out to ~0.5 per bucket, the spike to ~0.99
  CHECK(mean.front().second == doctest::Approx(0.5));
  const auto mm = report_detail::thin(x, y, 100, Thinning::min_max);
  CHECK(mm.size() <= 102);
  CHECK(mm.front().first == 0);
  CHECK(mm.back().first == double(n - 1));
  bool spike = false;
  for (std::size_t i = 0; i < mm.size(); ++i) {
    spike |= mm[i].first == 4321 && mm[i].second == 50;
    if (i) CHECK(mm[i].first > mm[i - 1].first);  // in step order
  }
  CHECK(spike);
  // Few points: all finite ones, untouched.
  const auto all = report_detail::thin({1, 2, 3}, {1, std::nan(""), 3}, 100, Thinning::mean);
  REQUIRE(all.size() == 2);
  CHECK(all[1].first == 3);
}

TEST_CASE("report: svg_bar_chart groups series per domain, labels values, sorts") {
  test::TempDir dir("report");
  const std::vector<std::string> cats{"Gutenberg (PG-19)", "<b>&",
                                      "A very long domain name that goes on and on and on"};
  const std::vector<BarSeries> series{{"reference", {0.2, 0.5, 0.3}, ""}, {"DoReMi", {0.6, 0.1, 0.3}, ""}};
  BarChartOptions o;
  o.title = "final weights";
  o.order = BarOrder::descending;
  o.sort_series = 1;
  o.value_format = "{:.3f}";
  const std::string svg = svg_bar_chart(cats, series, o);
  SUBCASE("well-formed XML") {
    write_bytes(dir.path / "bar.svg", svg);
    check_well_formed({dir.path / "bar.svg"});
  }
  // A rect per bar plus the background, the legend swatches and the bands.
  CHECK(count(svg, "fill=\"#1f77b4\"") == 3 + 1);
  CHECK(count(svg, "fill=\"#9a9a9a\"") == 3 + 1);
  for (const char* v : {">0.200<", ">0.500<", ">0.300<", ">0.600<", ">0.100<"}) CHECK(svg.find(v) != std::string::npos);
  CHECK(svg.find(">reference<") != std::string::npos);
  CHECK(svg.find(">DoReMi<") != std::string::npos);
  // Sorted by DoReMi, largest first: Gutenberg (0.6), the long name (0.3), <b>& (0.1).
  const auto g = svg.find(">Gutenberg (PG-19)<"), l = svg.find(">A very long"), b = svg.find(">&lt;b&gt;&amp;<");
  REQUIRE(g != std::string::npos);
  REQUIRE(l != std::string::npos);
  REQUIRE(b != std::string::npos);
  CHECK(g < l);
  CHECK(l < b);
  // The long name is shortened on the axis and whole in its tooltip.
  CHECK(svg.find("<title>A very long domain name that goes on and on and on</title>") != std::string::npos);
  CHECK(svg.find(">A very long domain name that goes on and on and on</text>") == std::string::npos);
  CHECK(svg.find("\xe2\x80\xa6<") != std::string::npos);

  SUBCASE("three series, negative and missing values") {
    const std::string s3 =
        svg_bar_chart({"a", "b"}, {{"x", {1, -2}, ""}, {"y", {std::nan(""), 3}, ""}, {"z", {0, 1}, "#123456"}});
    CHECK(xml_problem(s3) == "");
    CHECK(s3.find(">n/a<") != std::string::npos);
    CHECK(s3.find(">-2<") != std::string::npos);
    CHECK(s3.find("#123456") != std::string::npos);
  }
  SUBCASE("bad input is an error") {
    CHECK_THROWS_AS(svg_bar_chart({"a"}, {}), Error);
    CHECK_THROWS_WITH_AS(svg_bar_chart({"a", "b"}, {{"x", {1}, ""}}), doctest::Contains("series 'x'"), Error);
    BarChartOptions bad;
    bad.value_format = "{:.3q}";
    CHECK_THROWS_WITH_AS(svg_bar_chart({"a"}, {{"x", {1}, ""}}, bad), doctest::Contains("{:.3q}"), Error);
  }
}

TEST_CASE("report: write_report writes the charts and a page with all tables") {
  test::TempDir dir("report");
  const fs::path out = dir.path / "report";
  const std::size_t k = pile.size(), n = 1500;
  ReportData r;
  r.title = "Run <1> & co";
  r.settings = {{"reweight_eta", "1"}, {"model", "gpt <120M>"}};
  r.domains = pile;
  for (std::size_t i = 0; i < k; ++i) {
    r.reference_weights.push_back(double(i + 1) / double(k * (k + 1) / 2));
    r.doremi_weights.push_back(1.0 / double(k));
  }
  r.doremi_weights[0] = 0.123456;  // a value to find in the table
  r.steps.resize(n);
  for (std::size_t s = 0; s < n; ++s) r.steps[s] = long(s + 1);
  r.step_weights = trajectory(n, k);
  r.step_average_weights = trajectory(n, k);
  std::vector<double> base(k), doremi(k);
  for (std::size_t i = 0; i < k; ++i) base[i] = 2.0 + 0.1 * double(i), doremi[i] = base[i] - 0.05;
  base[7] = 9.87654;  // the baseline's worst case (Github)
  doremi[3] = 2.5;    // DM Mathematics: worse than the baseline (2.3)
  r.baseline_log_perplexity = base;
  r.doremi_log_perplexity = doremi;
  write_report(out, r);

  SUBCASE("all files are well-formed XML") {
    std::vector<fs::path> files;
    for (const char* f : {"weights_over_steps.svg", "average_weights_over_steps.svg", "final_weights.svg",
                          "perplexity.svg", "report.html"}) {
      REQUIRE(fs::exists(out / f));
      files.push_back(out / f);
    }
    check_well_formed(files);  // the page is XHTML-compatible, so XML parsers accept it too
  }
  CHECK(count(read_bytes(out / "weights_over_steps.svg"), "<polyline") == k);
  const std::string html = read_bytes(out / "report.html");
  CHECK(count(html, "<svg ") == 4);  // every chart inlined
  for (const char* f :
       {"weights_over_steps.svg", "average_weights_over_steps.svg", "final_weights.svg", "perplexity.svg"})
    CHECK(html.find(f) != std::string::npos);
  CHECK(count(html, "<polyline") == 2 * k);
  CHECK(html.find("<title>Run &lt;1&gt; &amp; co</title>") != std::string::npos);
  CHECK(html.find("<td>gpt &lt;120M&gt;</td>") != std::string::npos);
  CHECK(html.find("<td>&lt;b&gt;&amp;</td>") != std::string::npos);
  CHECK(html.find("<td>Gutenberg (PG-19)</td>") != std::string::npos);
  CHECK(html.find(">0.1235<") != std::string::npos);  // DoReMi weight of ArXiv
  CHECK(html.find(">9.8765<") != std::string::npos);  // the baseline's worst case, in its row and the summary
  // Uniform averages.
  double ab = 0, ad = 0;
  for (std::size_t i = 0; i < k; ++i) ab += base[i] / double(k), ad += doremi[i] / double(k);
  CHECK(html.find(fmt::format(">{:.4f}<", ab)) != std::string::npos);
  CHECK(html.find(fmt::format(">{:.4f}<", ad)) != std::string::npos);
  CHECK(html.find("uniform average") != std::string::npos);
  CHECK(html.find("worst case") != std::string::npos);
  CHECK(html.find("better on 21 of 22 domains") != std::string::npos);
  CHECK(html.find("class=\"num worse\">+0.2000<") != std::string::npos);
  // Escaped everywhere: the raw name never appears.
  CHECK(html.find("<b>&") == std::string::npos);

  SUBCASE("without perplexities or a trajectory, those charts are left out (and stale ones removed)") {
    ReportData r2 = r;
    r2.baseline_log_perplexity.reset();
    r2.doremi_log_perplexity.reset();
    r2.steps.clear();
    r2.step_weights.clear();
    r2.step_average_weights.clear();
    write_report(out, r2);
    CHECK_FALSE(fs::exists(out / "perplexity.svg"));
    CHECK_FALSE(fs::exists(out / "weights_over_steps.svg"));
    CHECK(fs::exists(out / "final_weights.svg"));
    const std::string h2 = read_bytes(out / "report.html");
    CHECK(count(h2, "<svg ") == 1);
    CHECK(h2.find("log-perplexity") == std::string::npos);
    check_well_formed({out / "report.html"});
    for (const auto& e : fs::directory_iterator(out))
      CHECK(e.path().filename().string().front() != '.');  // no temporaries
  }
  SUBCASE("only one model's perplexity: one series, no difference column") {
    ReportData r3 = r;
    r3.baseline_log_perplexity.reset();
    write_report(out, r3);
    const std::string h3 = read_bytes(out / "report.html");
    CHECK(h3.find(">difference<") == std::string::npos);
    CHECK(h3.find("uniform average") != std::string::npos);
    check_well_formed({out / "perplexity.svg"});
  }
  SUBCASE("mismatched sizes are errors") {
    ReportData bad = r;
    bad.reference_weights.pop_back();
    CHECK_THROWS_WITH_AS(write_report(out, bad), doctest::Contains("reference weights"), Error);
    bad = r;
    bad.step_weights.pop_back();
    CHECK_THROWS_WITH_AS(write_report(out, bad), doctest::Contains("per-step weights"), Error);
    bad = r;
    (*bad.doremi_log_perplexity).push_back(1);
    CHECK_THROWS_AS(write_report(out, bad), Error);
  }
}

TEST_CASE("report: downstream accuracy against step, one small chart per task and the average, and a final table") {
  test::TempDir dir("report-downstream");
  const fs::path out = dir.path / "report";
  ReportData r;
  r.domains = {"a", "b"};
  r.reference_weights = {0.5, 0.5};
  r.doremi_weights = {0.3, 0.7};
  write_report(out, r);  // no downstream results: no such section or charts
  const std::string without = read_bytes(out / "report.html");
  CHECK(without.find("Downstream accuracy") == std::string::npos);
  CHECK_FALSE(fs::exists(out / "downstream_average.svg"));

  r.downstream_tasks = {"trivia_qa", "lambada", "a<b>"};
  // The baseline lacks a checkpoint at step 200: its line has no point there.
  r.downstream = {{"baseline", {100, 300}, {{1, 10, 4}, {2, 14, 5}}},
                  {"DoReMi", {100, 200, 300}, {{1.5, 11, 4}, {2.5, 13, 6}, {3.25, 17.5, 6}}}};
  write_report(out, r);
  const std::string html = read_bytes(out / "report.html");
  std::vector<fs::path> files{out / "report.html"};
  for (const char* f : {"downstream_trivia_qa.svg", "downstream_lambada.svg", "downstream_a_b_.svg",
                        "downstream_average.svg"}) {
    REQUIRE_MESSAGE(fs::exists(out / f), f);
    files.push_back(out / f);
    CHECK(html.find(f) != std::string::npos);
  }
  check_well_formed(files);
  CHECK(html.find("Downstream accuracy over training") != std::string::npos);
  CHECK(count(html, "<svg ") == 1 + 4);  // the weights chart and the downstream ones
  // Two lines per chart: 3 points for DoReMi, 2 for the baseline.
  const auto lines = polylines_points(read_bytes(out / "downstream_lambada.svg"));
  REQUIRE(lines.size() == 2);
  std::vector<std::size_t> points;
  for (const auto& l : lines) points.push_back(std::size_t(count(l, ",")));
  std::sort(points.begin(), points.end());
  CHECK(points == std::vector<std::size_t>{2, 3});
  // The final table: each model's last checkpoint, the average and the difference.
  CHECK(html.find("baseline (step 300)") != std::string::npos);
  CHECK(html.find("DoReMi (step 300)") != std::string::npos);
  CHECK(html.find(">17.50<") != std::string::npos);           // DoReMi on lambada
  CHECK(html.find(">+3.50<") != std::string::npos);           // 17.5 - 14
  CHECK(html.find(fmt::format(">{:.2f}<", (3.25 + 17.5 + 6) / 3)) != std::string::npos);  // DoReMi's average
  CHECK(html.find(fmt::format(">{:.2f}<", (2.0 + 14 + 5) / 3)) != std::string::npos);     // the baseline's
  CHECK(html.find("<td>a&lt;b&gt;</td>") != std::string::npos);

  SUBCASE("all-zero accuracies: the value axis runs from 0 up, not around 0") {
    ReportData r0 = r;
    for (auto& c : r0.downstream)
      for (auto& row : c.accuracy) std::fill(row.begin(), row.end(), 0.0);
    write_report(out, r0);
    const std::string svg = read_bytes(out / "downstream_average.svg");
    CHECK(svg.find(">-") == std::string::npos);  // no negative tick label
    CHECK(svg.find(">1.0<") != std::string::npos);
  }
  SUBCASE("a rewrite without downstream removes its charts") {
    ReportData r2 = r;
    r2.downstream.clear();
    write_report(out, r2);
    CHECK_FALSE(fs::exists(out / "downstream_lambada.svg"));
    CHECK_FALSE(fs::exists(out / "downstream_average.svg"));
    CHECK(read_bytes(out / "report.html").find("Downstream") == std::string::npos);
  }
  SUBCASE("mismatched sizes are errors") {
    ReportData bad = r;
    bad.downstream[0].accuracy[1].pop_back();
    CHECK_THROWS_WITH_AS(write_report(out, bad), doctest::Contains("'baseline'"), Error);
    bad = r;
    bad.downstream[1].steps.pop_back();
    CHECK_THROWS_WITH_AS(write_report(out, bad), doctest::Contains("'DoReMi'"), Error);
  }
}

TEST_CASE("report: read_weight_trajectory reads a DRO metrics.jsonl") {
  test::TempDir dir("report");
  const fs::path p = dir.path / "metrics.jsonl";
  auto line = [](long step, double a0, double avg0) {
    return fmt::format(
        R"({{"step":{},"loss":3.2,"lr":0.001,"grad_norm":1.0,"tokens":4096,"tokens_per_s":100.0,"mean_loss":3.3,)"
        R"("reference_loss":3.1,"domains":["a","b & c"],"scores":[0.1,0.2],"alpha":[{},{}],"avg_alpha":[{},{}],)"
        R"("domain_tokens":[10,20],"domain_loss":[3,3],"domain_reference_loss":[3,3]}})",
        step, a0, 1 - a0, avg0, 1 - avg0);
  };
  write_bytes(p, line(1, 0.4, 0.45) + "\n\n" + line(2, 0.3, 0.4) + "\n" + line(3, 0.2, 0.35) + "\r\n" +
                     // a resumed run re-logs step 3 (and goes on): the later values win
                     line(3, 0.25, 0.36) + "\n" + line(4, 0.1, 0.3) + "\n");
  const auto t = read_weight_trajectory(p);
  CHECK(t.kind == TrajectoryWeights::alpha);
  CHECK(t.domains == std::vector<std::string>{"a", "b & c"});
  CHECK(t.steps == std::vector<long>{1, 2, 3, 4});
  REQUIRE(t.weights.size() == 4);
  CHECK(t.weights[2][0] == 0.25);
  CHECK(t.weights[3][1] == doctest::Approx(0.9));
  const auto avg = read_weight_trajectory(p, TrajectoryWeights::avg_alpha);
  CHECK(avg.kind == TrajectoryWeights::avg_alpha);
  CHECK(avg.weights[0][0] == 0.45);
  CHECK(avg.weights[3][0] == 0.3);

  SUBCASE("errors name the file and the line") {
    const fs::path bad = dir.path / "bad.jsonl";
    auto expect = [&](const std::string& text, const std::string& what) {
      write_bytes(bad, text);
      CAPTURE(text);
      CHECK_THROWS_WITH_AS(read_weight_trajectory(bad), doctest::Contains(what.c_str()), Error);
    };
    const std::string ok = line(1, 0.5, 0.5) + "\n";
    expect(ok + "{\"step\": 2, \"alpha\": [\n", bad.string() + ":2: invalid JSON");
    expect(ok + line(2, 0.5, 0.5).substr(0, 40) + "\n", bad.string() + ":2: invalid JSON");  // a cut-off line
    expect(ok + R"({"step":2,"loss":1})" + "\n", bad.string() + ":2: no \"domains\" or \"alpha\"");
    expect(ok + R"({"step":2,"domains":["a","b & c"],"alpha":[0.5]})" + "\n", bad.string() + ":2: 1 values");
    expect(ok + R"({"step":2,"domains":["a","x"],"alpha":[0.5,0.5]})" + "\n", bad.string() + ":2: the domains differ");
    expect(ok + R"({"step":2,"domains":["a","b & c"],"alpha":[0.5,"x"]})" + "\n",
           bad.string() + ":2: \"alpha\" must be");
    expect(ok + R"({"domains":["a","b & c"],"alpha":[0.5,0.5]})" + "\n", bad.string() + ":2: no integer \"step\"");
    expect("\n\n[1,2]\n", bad.string() + ":3: expected a JSON object");
    CHECK_THROWS_WITH_AS(read_weight_trajectory(dir.path / "missing.jsonl"), doctest::Contains("missing.jsonl"), Error);
    CHECK_THROWS_WITH_AS(read_weight_trajectory(dir.path), doctest::Contains("directory"), Error);
  }
  SUBCASE("the trajectory feeds the line chart directly") {
    const std::string svg = svg_line_chart(t.steps, t.weights, t.domains);
    CHECK(count(svg, "<polyline") == 2);
    CHECK(svg.find(">b &amp; c<") != std::string::npos);
  }
}
