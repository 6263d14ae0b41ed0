#pragma once
// SVG charts written by the library itself (no plotting dependency):
//   svg_line_chart(steps, matrix[step][series], names, options)   one polyline per series
//   svg_bar_chart(categories, {series...}, options)              grouped horizontal bars
// Text widths are estimated (no font metrics): long names are shortened with
// "…" and keep their full text in a tooltip (<title>). The report page
// (report.hpp) inlines them.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "doremi/core/error.hpp"
#include "doremi/eval/xml_text.hpp"

namespace doremi {

// How a line chart thins a series with more points than it draws.
enum class Thinning {
  mean,     // one point per bucket of steps: their mean (a moving average)
  min_max,  // two points per bucket: its lowest and highest value (keeps spikes)
};

// The value a line chart's legend shows (and sorts by, largest first).
enum class LegendValue {
  none,  // no value; legend in series order
  last,  // each series' last finite value
  mean,  // each series' mean over all its finite values
};

namespace report_detail {

constexpr const char* font_family = "DejaVu Sans, Helvetica, Arial, sans-serif";

// Line series: 11 well-separated colours (Tableau 10 and black), repeated
// with a dash pattern: 22 distinguishable series, 33 before styles repeat.
inline const std::vector<const char*>& line_colors() {
  static const std::vector<const char*> c{"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                                          "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#000000"};
  return c;
}
inline const char* line_dash(std::size_t i) {
  static const char* d[] = {"", "7 3", "2 2"};
  return d[(i / line_colors().size()) % 3];
}
inline const char* line_color(std::size_t i) { return line_colors()[i % line_colors().size()]; }

// Bar series: grey first (the usual baseline/reference), then blue, orange, ...
inline const char* bar_color(std::size_t i) {
  static const char* c[] = {"#9a9a9a", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"};
  return c[i % 6];
}

// Rough width of a text in pixels (DejaVu Sans/Arial average), for layout only.
inline double text_width(std::string_view s, double font_size) { return 0.6 * font_size * double(utf8_length(s)); }

inline std::string num(double v) {  // a coordinate, in pixels: a tenth is plenty
  if (std::abs(v) < 0.05) v = 0;    // no "-0.0"
  return fmt::format("{:.1f}", v);
}

// An axis: [lo, hi] with tick values, from the data range, ~target ticks.
struct Axis {
  double lo = 0, hi = 1;
  std::vector<double> ticks;
  int decimals = 0;
  bool log = false;
};

inline double nice_step(double range, int target) {
  const double raw = range / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double norm = raw / mag;
  return (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
}

inline Axis linear_axis(double lo, double hi, int target, bool integer = false) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) lo = 0, hi = 1;
  if (hi < lo) std::swap(lo, hi);
  if (hi - lo <= std::abs(hi) * 1e-12) {  // one value: open a window around it
    const double pad = hi == 0 ? 1 : std::abs(hi) * 0.1;
    lo -= pad, hi += pad;
  }
  Axis a;
  double step = nice_step(hi - lo, target);
  if (integer) step = std::max(step, 1.0);
  a.lo = std::floor(lo / step + 1e-9) * step;
  a.hi = std::ceil(hi / step - 1e-9) * step;
  for (int k = 0;; ++k) {
    const double t = a.lo + k * step;
    if (t > a.hi + step * 1e-6) break;
    a.ticks.push_back(std::abs(t) < step * 1e-9 ? 0.0 : t);
  }
  a.decimals = std::max(0, int(-std::floor(std::log10(step) + 1e-9)));
  return a;
}

// Log axis over positive data: whole decades, ticks at 1, 2, 5 × 10^k when
// few decades are shown.
inline Axis log_axis(double lo, double hi) {
  Axis a;
  a.log = true;
  if (!(lo > 0) || !std::isfinite(lo) || !std::isfinite(hi) || hi < lo) lo = 1e-3, hi = 1;
  const int d0 = int(std::floor(std::log10(lo) + 1e-9)), d1 = std::max(d0 + 1, int(std::ceil(std::log10(hi) - 1e-9)));
  a.lo = std::pow(10.0, d0), a.hi = std::pow(10.0, d1);
  const bool fine = d1 - d0 <= 3;
  for (int d = d0; d <= d1; ++d)
    for (double m : {1.0, 2.0, 5.0}) {
      if (m != 1.0 && (!fine || d == d1)) continue;
      a.ticks.push_back(m * std::pow(10.0, d));
    }
  a.decimals = std::max(0, -d0);
  return a;
}

inline double axis_fraction(const Axis& a, double v) {
  if (a.log) return (std::log10(std::max(v, a.lo * 1e-3)) - std::log10(a.lo)) / (std::log10(a.hi) - std::log10(a.lo));
  return (v - a.lo) / (a.hi - a.lo);
}

inline std::string tick_label(const Axis& a, double v, bool thousands = false) {
  if (thousands && a.decimals == 0 && std::abs(a.hi) >= 10000 && std::fmod(v, 1000.0) == 0)
    return fmt::format("{}k", static_cast<long long>(v / 1000));
  if (a.log) {
    const int dec = std::max(0, int(-std::floor(std::log10(v) + 1e-9)));
    return fmt::format("{:.{}f}", v, dec);
  }
  return fmt::format("{:.{}f}", v, a.decimals);
}

inline std::string format_value(std::string_view format, double v) {
  if (!std::isfinite(v)) return std::isnan(v) ? "n/a" : (v > 0 ? "inf" : "-inf");
  try {
    return fmt::format(fmt::runtime(format), v);
  } catch (const fmt::format_error& e) {
    fail("report: invalid value format \"{}\": {}", format, e.what());
  }
}

// The points of one series to draw, at most ~max_points (never more than
// max_points + 2): all finite points when there are few enough; else the
// series is cut into buckets of consecutive points and each bucket gives
//   mean:     one point, the mean step and mean value of its finite points
//             (a moving-average view: the trend of a noisy series stays legible);
//   min_max:  its lowest and highest finite points, in step order, plus the
//             series' first and last points (every spike survives).
inline std::vector<std::pair<double, double>> thin(const std::vector<double>& x, const std::vector<double>& y,
                                                   std::size_t max_points, Thinning how) {
  const std::size_t n = y.size();
  std::vector<std::pair<double, double>> out;
  max_points = std::max<std::size_t>(max_points, 2);
  if (n <= max_points) {
    for (std::size_t i = 0; i < n; ++i)
      if (std::isfinite(y[i])) out.emplace_back(x[i], y[i]);
    return out;
  }
  const std::size_t buckets = how == Thinning::mean ? max_points : max_points / 2;
  std::size_t previous = n;  // last index emitted (min_max)
  auto emit = [&](std::size_t i) {
    if (i < n && i != previous && std::isfinite(y[i])) out.emplace_back(x[i], y[i]), previous = i;
  };
  if (how == Thinning::min_max) emit(0);
  for (std::size_t b = 0; b < buckets; ++b) {
    const std::size_t begin = b * n / buckets, end = (b + 1) * n / buckets;
    if (how == Thinning::mean) {
      double sx = 0, sy = 0;
      std::size_t count = 0;
      for (std::size_t i = begin; i < end; ++i)
        if (std::isfinite(y[i])) sx += x[i], sy += y[i], ++count;
      if (count) out.emplace_back(sx / double(count), sy / double(count));
      continue;
    }
    std::size_t lo = n, hi = n;
    for (std::size_t i = begin; i < end; ++i) {
      if (!std::isfinite(y[i])) continue;
      if (lo == n || y[i] < y[lo]) lo = i;
      if (hi == n || y[i] > y[hi]) hi = i;
    }
    emit(std::min(lo, hi));
    emit(std::max(lo, hi));
  }
  if (how == Thinning::min_max) emit(n - 1);
  return out;
}

inline std::string svg_open(double width, double height, std::string_view title) {
  return fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"{2}\" role=\"img\" aria-label=\"{3}\">\n"
      "<title>{3}</title>\n"
      "<rect x=\"0\" y=\"0\" width=\"{0}\" height=\"{1}\" fill=\"#ffffff\"/>\n",
      num(width), num(height), font_family, xml_escape(title));
}

}  // namespace report_detail

// -------------------------------------------------------------- line chart --

struct LineChartOptions {
  std::string title = "Domain weights over proxy steps";
  std::string x_label = "step";
  std::string y_label = "domain weight";
  int width = 1000;
  int height = 560;               // grows when the legend needs more room
  std::size_t max_points = 1000;  // per series; more are thinned (see Thinning)
  Thinning thinning = Thinning::mean;
  bool log_y = false;                            // logarithmic value axis (non-positive values are dropped)
  bool y_from_zero = false;  // linear value axis from 0 (and to at least 1: all-zero data), e.g. accuracies
  LegendValue legend_value = LegendValue::last;  // shown in the legend, which is sorted by it
  std::string value_format = "{:.4f}";
  // Optional dashed horizontal guide (e.g. the uniform weight 1/k) and its label.
  std::optional<double> guide;
  std::string guide_label;
};

// One polyline per series: values[s][i] is series i at x = steps[s]. Steps
// must be as many as rows, every row as long as `names`; non-finite values
// (and non-positive ones on a log axis) are left out of their line.
// Long on purpose: one SVG document written top to bottom (layout, axes,
// series, legend), whose parts share a dozen layout values; each part is marked.
inline std::string svg_line_chart(const std::vector<long>& steps, const std::vector<std::vector<double>>& values,
                                  const std::vector<std::string>& names, const LineChartOptions& opt = {}) {
  using namespace report_detail;
  const std::size_t n = steps.size(), k = names.size();
  if (values.size() != n) fail("svg_line_chart: {} steps but {} rows of values", n, values.size());
  for (std::size_t s = 0; s < n; ++s)
    if (values[s].size() != k)
      fail("svg_line_chart: row {} (step {}) has {} values for {} series", s, steps[s], values[s].size(), k);
  if (opt.width < 200 || opt.height < 150) fail("svg_line_chart: the chart must be at least 200x150 pixels");

  auto usable = [&](double v) { return std::isfinite(v) && (!opt.log_y || v > 0); };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  // Each series in column form (unusable values as NaN), its legend value, and
  // the points to draw; the value range is that of the drawn points.
  std::vector<double> x(n);
  for (std::size_t s = 0; s < n; ++s) x[s] = double(steps[s]);
  std::vector<std::vector<std::pair<double, double>>> points(k);
  std::vector<double> legend(k, nan);
  double ymin = std::numeric_limits<double>::infinity(), ymax = -ymin;
  {
    std::vector<double> column(n);
    for (std::size_t i = 0; i < k; ++i) {
      double sum = 0;
      std::size_t count = 0;
      for (std::size_t s = 0; s < n; ++s) {
        const double v = values[s][i];
        column[s] = usable(v) ? v : nan;
        if (usable(v)) {
          sum += v, ++count;
          if (opt.legend_value == LegendValue::last) legend[i] = v;
        }
      }
      if (opt.legend_value == LegendValue::mean && count) legend[i] = sum / double(count);
      points[i] = thin(x, column, opt.max_points, opt.thinning);
      for (const auto& p : points[i]) ymin = std::min(ymin, p.second), ymax = std::max(ymax, p.second);
    }
  }
  if (opt.guide && usable(*opt.guide)) ymin = std::min(ymin, *opt.guide), ymax = std::max(ymax, *opt.guide);
  const bool empty = !(ymin <= ymax);
  if (empty) ymin = opt.log_y ? 1e-3 : 0, ymax = 1;
  if (!opt.log_y && ymin >= 0 && ymin <= 0.5 * ymax) ymin = 0;  // start at zero unless that wastes the chart
  if (!opt.log_y && opt.y_from_zero) ymin = std::min(ymin, 0.0), ymax = std::max(ymax, ymin == ymax ? 1.0 : ymax);
  const Axis ya = opt.log_y ? log_axis(ymin, ymax) : linear_axis(ymin, ymax, 6);
  double xmin = 0, xmax = 1;
  if (n > 0) {
    xmin = double(*std::min_element(steps.begin(), steps.end()));
    xmax = double(*std::max_element(steps.begin(), steps.end()));
  }
  Axis xa = linear_axis(xmin, xmax, 8, true);
  if (n > 0 && xmin < xmax) xa.lo = std::min(xa.lo, xmin), xa.hi = std::max(xa.hi, xmax);

  // Legend order and text.
  std::vector<std::size_t> order(k);
  std::iota(order.begin(), order.end(), std::size_t(0));
  if (opt.legend_value != LegendValue::none)
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      const double va = std::isfinite(legend[a]) ? legend[a] : -std::numeric_limits<double>::infinity();
      const double vb = std::isfinite(legend[b]) ? legend[b] : -std::numeric_limits<double>::infinity();
      return va > vb;
    });

  // Layout.
  const double font = 12, row = 17, title_h = 44, bottom = 58, left = 72;
  const std::size_t name_chars = 24;
  double name_w = 0;
  for (const auto& s : names) name_w = std::max(name_w, text_width(utf8_shorten(s, name_chars), font));
  const bool legend_values = opt.legend_value != LegendValue::none;
  const double value_w = legend_values ? 52 : 0;
  const double legend_w = k ? std::min(28 + 6 + name_w + 10 + value_w + 12, 0.45 * opt.width) : 0;
  const double height = std::max<double>(opt.height, title_h + 20 + row * double(k + 1) + bottom);
  const double width = opt.width;
  const double px0 = left, px1 = width - legend_w - 24, py0 = title_h, py1 = height - bottom;
  auto X = [&](double x) { return px0 + (px1 - px0) * axis_fraction(xa, x); };
  auto Y = [&](double y) { return py1 - (py1 - py0) * axis_fraction(ya, y); };

  std::string svg = svg_open(width, height, opt.title);
  svg += fmt::format("<text x=\"{}\" y=\"28\" font-size=\"18\" font-weight=\"bold\" fill=\"#222\">{}</text>\n",
                     num(px0), xml_escape(opt.title));
  // Grid and ticks.
  svg += "<g font-size=\"11\" fill=\"#444\">\n";
  for (double t : ya.ticks) {
    const double y = Y(t);
    svg += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"#e3e3e3\" stroke-width=\"1\"/>\n",
                       num(px0), num(y), num(px1));
    svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n", num(px0 - 6), num(y + 4),
                       xml_escape(tick_label(ya, t)));
  }
  for (double t : xa.ticks) {
    if (t < xa.lo - 1e-9 || t > xa.hi + 1e-9) continue;
    const double x = X(t);
    svg += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"#eeeeee\" stroke-width=\"1\"/>\n",
                       num(x), num(py0), num(py1));
    svg += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"#666\" stroke-width=\"1\"/>\n",
                       num(x), num(py1), num(py1 + 5));
    svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", num(x), num(py1 + 18),
                       xml_escape(tick_label(xa, t, true)));
  }
  svg += "</g>\n";
  // Axes and labels.
  svg += fmt::format("<path d=\"M{0} {1} V{2} H{3}\" fill=\"none\" stroke=\"#666\" stroke-width=\"1\"/>\n", num(px0),
                     num(py0), num(py1), num(px1));
  svg += fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"13\" text-anchor=\"middle\" fill=\"#222\">{}</text>\n",
                     num((px0 + px1) / 2), num(height - 16), xml_escape(opt.x_label));
  svg += fmt::format(
      "<text x=\"0\" y=\"0\" font-size=\"13\" text-anchor=\"middle\" fill=\"#222\" "
      "transform=\"translate({} {}) rotate(-90)\">{}</text>\n",
      num(18), num((py0 + py1) / 2), xml_escape(opt.y_label + (opt.log_y ? " (log scale)" : "")));
  if (empty)
    svg += fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"14\" text-anchor=\"middle\" fill=\"#888\">no data</text>\n",
                       num((px0 + px1) / 2), num((py0 + py1) / 2));
  // Lines, clipped to the plot area; drawn in reverse legend order so the
  // largest series lie on top.
  // The clip path's id must be unique within a page that inlines several
  // charts: derive it from the chart's title and series (FNV-1a).
  std::uint64_t hash = 1469598103934665603ull;
  for (const std::string* s : {&opt.title, &opt.y_label})
    for (char c : *s) hash = (hash ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  for (const auto& s : names)
    for (char c : s + '\n') hash = (hash ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  const std::string clip = fmt::format("plot-area-{:016x}", hash);
  svg += fmt::format("<clipPath id=\"{}\"><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/></clipPath>\n", clip,
                     num(px0), num(py0 - 2), num(px1 - px0 + 2), num(py1 - py0 + 4));
  svg += fmt::format("<g clip-path=\"url(#{})\" fill=\"none\" stroke-width=\"1.6\" stroke-linejoin=\"round\">\n", clip);
  for (std::size_t r = k; r-- > 0;) {
    const std::size_t i = order[r];
    std::string coords;
    for (const auto& [px, py] : points[i]) {
      if (!coords.empty()) coords += ' ';
      coords += num(X(px)) + "," + num(Y(py));
    }
    const char* dash = line_dash(i);
    svg += fmt::format("<polyline stroke=\"{}\"{} points=\"{}\"><title>{}</title></polyline>\n", line_color(i),
                       *dash ? fmt::format(" stroke-dasharray=\"{}\"", dash) : std::string(), coords,
                       xml_escape(names[i]));
  }
  svg += "</g>\n";
  // Guide line, over the lines; its label with a white halo.
  if (opt.guide && usable(*opt.guide)) {
    const double y = Y(*opt.guide);
    svg += fmt::format(
        "<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"#555\" stroke-width=\"1\" "
        "stroke-dasharray=\"4 4\"/>\n",
        num(px0), num(y), num(px1));
    if (!opt.guide_label.empty())
      svg += fmt::format(
          "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\" fill=\"#333\" stroke=\"#ffffff\" "
          "stroke-width=\"3\" paint-order=\"stroke\">{}</text>\n",
          num(px1 - 4), num(y - 4), xml_escape(opt.guide_label));
  }
  // Legend.
  if (k) {
    const double lx = px1 + 24, ly = py0 + 4;
    svg += "<g font-size=\"12\" fill=\"#222\">\n";
    if (legend_values)
      svg += fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\" fill=\"#666\">{}</text>\n",
                         num(width - 12), num(ly + 4), opt.legend_value == LegendValue::last ? "last" : "mean");
    for (std::size_t r = 0; r < k; ++r) {
      const std::size_t i = order[r];
      const double y = ly + row * double(r + 1);
      const char* dash = line_dash(i);
      svg += fmt::format("<g><title>{}</title>", xml_escape(names[i]));
      svg += fmt::format("<line x1=\"{0}\" y1=\"{2}\" x2=\"{1}\" y2=\"{2}\" stroke=\"{3}\" stroke-width=\"2.4\"{4}/>",
                         num(lx), num(lx + 28), num(y), line_color(i),
                         *dash ? fmt::format(" stroke-dasharray=\"{}\"", dash) : std::string());
      svg += fmt::format("<text x=\"{}\" y=\"{}\">{}</text>", num(lx + 34), num(y + 4),
                         xml_escape(utf8_shorten(names[i], name_chars)));
      if (legend_values)
        svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#555\">{}</text>", num(width - 12),
                           num(y + 4), xml_escape(format_value(opt.value_format, legend[i])));
      svg += "</g>\n";
    }
    svg += "</g>\n";
  }
  svg += "</svg>\n";
  return svg;
}

// --------------------------------------------------------------- bar chart --

struct BarSeries {
  std::string name;
  std::vector<double> values;  // one per category
  std::string color;           // empty: grey, blue, orange, ... by position
};

enum class BarOrder {
  given,       // categories as passed
  descending,  // by the values of series `sort_series`, largest first
  ascending,   // ... smallest first
  by_name,     // alphabetically by category
};

struct BarChartOptions {
  std::string title;
  std::string value_label;  // the value axis's label
  BarOrder order = BarOrder::given;
  std::size_t sort_series = 0;
  std::string value_format = "{:.3g}";  // fmt format of the value labels
  int width = 900;
  bool from_zero = true;  // value axis includes 0; false: it starts near the smallest value
  std::size_t max_name_chars = 32;
};

// Grouped horizontal bars: one group per category (names on the left), one
// bar per series in each group, each labelled with its value; a legend on
// top. Non-finite values get no bar and the label "n/a".
// Long on purpose, as svg_line_chart: one document written top to bottom.
inline std::string svg_bar_chart(const std::vector<std::string>& categories, const std::vector<BarSeries>& series,
                                 const BarChartOptions& opt = {}) {
  using namespace report_detail;
  const std::size_t n = categories.size(), m = series.size();
  if (m == 0) fail("svg_bar_chart: no series");
  for (const auto& s : series)
    if (s.values.size() != n)
      fail("svg_bar_chart: series '{}' has {} values for {} categories", s.name, s.values.size(), n);
  if (opt.order != BarOrder::given && opt.order != BarOrder::by_name && opt.sort_series >= m)
    fail("svg_bar_chart: sort_series {} but only {} series", opt.sort_series, m);
  if (opt.width < 300) fail("svg_bar_chart: the chart must be at least 300 pixels wide");
  (void)format_value(opt.value_format, 1.0);  // a bad format fails here, with the format named

  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t(0));
  auto key = [&](std::size_t c) {
    const double v = series[opt.sort_series].values[c];
    return std::isfinite(v) ? v : -std::numeric_limits<double>::infinity();
  };
  if (opt.order == BarOrder::descending)
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return key(a) > key(b); });
  else if (opt.order == BarOrder::ascending)
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return key(a) < key(b); });
  else if (opt.order == BarOrder::by_name)
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return categories[a] < categories[b]; });

  double vmin = std::numeric_limits<double>::infinity(), vmax = -vmin;
  for (const auto& s : series)
    for (double v : s.values)
      if (std::isfinite(v)) vmin = std::min(vmin, v), vmax = std::max(vmax, v);
  if (!(vmin <= vmax)) vmin = 0, vmax = 1;
  if (opt.from_zero) vmin = std::min(vmin, 0.0), vmax = std::max(vmax, 0.0);
  else {
    const double pad = (vmax - vmin) * 0.15 + std::abs(vmax) * 1e-3;
    vmin -= pad;
  }
  Axis va = linear_axis(vmin, vmax, 6);
  if (!opt.from_zero && vmin >= 0) va.lo = std::max(va.lo, 0.0);

  // Layout: names on the left, value labels may stick out right of the axis end.
  const double font = 12, bar_h = m == 1 ? 16 : m == 2 ? 13 : 11, gap = 12;
  const double group_h = bar_h * double(m) + gap;
  double name_w = 0;
  for (const auto& c : categories) name_w = std::max(name_w, text_width(utf8_shorten(c, opt.max_name_chars), font));
  double label_w = 0;
  for (const auto& s : series)
    for (double v : s.values) label_w = std::max(label_w, text_width(format_value(opt.value_format, v), 11));
  const double title_h = opt.title.empty() ? 12 : 40, legend_h = 26, axis_h = 48;
  const double left = std::min(name_w + 20, 0.45 * opt.width);
  const double px0 = left, px1 = opt.width - label_w - 16;
  const double py0 = title_h + legend_h, py1 = py0 + group_h * double(n) + gap / 2;
  const double height = py1 + axis_h;
  auto X = [&](double v) { return px0 + (px1 - px0) * axis_fraction(va, std::clamp(v, va.lo, va.hi)); };

  std::string svg = svg_open(opt.width, height, opt.title.empty() ? "bar chart" : opt.title);
  if (!opt.title.empty())
    svg += fmt::format("<text x=\"12\" y=\"26\" font-size=\"18\" font-weight=\"bold\" fill=\"#222\">{}</text>\n",
                       xml_escape(opt.title));
  // Legend, in one row.
  {
    double x = px0;
    const double y = title_h + 8;
    svg += "<g font-size=\"12\" fill=\"#222\">\n";
    for (std::size_t j = 0; j < m; ++j) {
      const std::string color = series[j].color.empty() ? bar_color(j) : series[j].color;
      svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"14\" height=\"12\" fill=\"{}\"/>", num(x), num(y),
                         xml_escape(color));
      svg += fmt::format("<text x=\"{}\" y=\"{}\">{}</text>\n", num(x + 20), num(y + 10), xml_escape(series[j].name));
      x += 20 + text_width(series[j].name, 12) + 24;
    }
    svg += "</g>\n";
  }
  // Alternate groups on a light band, under the grid.
  for (std::size_t r = 1; r < n; r += 2)
    svg += fmt::format("<rect x=\"0\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"#f5f5f5\"/>\n",
                       num(py0 + group_h * double(r)), num(opt.width), num(group_h));
  // Grid and value axis.
  svg += "<g font-size=\"11\" fill=\"#444\">\n";
  for (double t : va.ticks) {
    const double x = X(t);
    svg += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"#e3e3e3\" stroke-width=\"1\"/>\n",
                       num(x), num(py0), num(py1));
    svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", num(x), num(py1 + 16),
                       xml_escape(tick_label(va, t)));
  }
  svg += "</g>\n";
  svg += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"#666\" stroke-width=\"1\"/>\n",
                     num(px0), num(py1), num(px1));
  if (!opt.value_label.empty())
    svg += fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"13\" text-anchor=\"middle\" fill=\"#222\">{}</text>\n",
                       num((px0 + px1) / 2), num(height - 10), xml_escape(opt.value_label));
  // Groups.
  const double base = X(va.lo <= 0 && va.hi >= 0 ? 0.0 : va.lo);
  for (std::size_t r = 0; r < n; ++r) {
    const std::size_t c = order[r];
    const double gy = py0 + gap / 2 + group_h * double(r);
    svg += fmt::format("<g><title>{}</title>", xml_escape(categories[c]));
    svg += fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"end\" fill=\"#222\">{}</text>",
                       num(px0 - 8), num(gy + bar_h * double(m) / 2 + 4),
                       xml_escape(utf8_shorten(categories[c], opt.max_name_chars)));
    for (std::size_t j = 0; j < m; ++j) {
      const double v = series[j].values[c];
      const double y = gy + bar_h * double(j);
      const std::string color = series[j].color.empty() ? bar_color(j) : series[j].color;
      if (std::isfinite(v)) {
        const double x = X(v);
        svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"/>", num(std::min(x, base)),
                           num(y + 0.5), num(std::abs(x - base)), num(bar_h - 1), xml_escape(color));
      }
      const double lx = std::isfinite(v) ? std::max(X(v), base) + 4 : base + 4;
      svg += fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"#333\">{}</text>", num(lx),
                         num(y + bar_h / 2 + 3.5), xml_escape(format_value(opt.value_format, v)));
    }
    svg += "</g>\n";
  }
  // The zero line over the bars, when it is not the left edge.
  if (base > px0 + 0.5)
    svg += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"#666\" stroke-width=\"1\"/>\n",
                       num(base), num(py0), num(py1));
  svg += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"#666\" stroke-width=\"1\"/>\n",
                     num(px0), num(py0), num(py1));
  svg += "</svg>\n";
  return svg;
}

}  // namespace doremi
