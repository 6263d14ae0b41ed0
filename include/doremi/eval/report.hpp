#pragma once
// A DoReMi run's report, written by the library itself (no plotting
// dependency): the SVG charts (svg_chart.hpp) and one self-contained HTML page.
//
//   auto traj = doremi::read_weight_trajectory("proxy/metrics.jsonl");   // "alpha" per step
//   doremi::ReportData r;
//   r.title = "DoReMi 120M, round 1";
//   r.settings = {{"proxy steps", "200000"}, {"reweight_eta", "1"}, {"reweight_eps", "0.001"}};
//   r.domains = traj.domains;
//   r.reference_weights = ...;                       // the reference run's train weights
//   r.doremi_weights = ...;                          // ᾱ (avg_domain_weights.json)
//   r.steps = traj.steps;  r.step_weights = traj.weights;
//   r.step_average_weights =   // optional: ᾱ per step, a second (smoother) chart
//       doremi::read_weight_trajectory("proxy/metrics.jsonl", doremi::TrajectoryWeights::avg_alpha).weights;
//   r.baseline_log_perplexity = ...;  r.doremi_log_perplexity = ...;   // optional
//   r.downstream_tasks = {"trivia_qa", "lambada"};                      // optional: task accuracy
//   r.downstream = {{"baseline", {1000, 2000}, {{1.2, 10.5}, {2.0, 12.1}}}, {"DoReMi", ...}};
//   doremi::write_report("out/report", r);
//   // out/report/{weights_over_steps.svg, average_weights_over_steps.svg, final_weights.svg,
//   //             perplexity.svg, downstream_<task>.svg..., downstream_average.svg, report.html}
//
// All text is escaped for XML/HTML (xml_text.hpp: invalid UTF-8 or control
// characters are replaced), so any domain name is safe.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstddef>
#include <filesystem>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "doremi/core/atomic_file.hpp"
#include "doremi/core/error.hpp"
#include "doremi/eval/svg_chart.hpp"
#include "doremi/eval/weight_trajectory.hpp"
#include "doremi/eval/xml_text.hpp"

namespace doremi {

// One model's downstream accuracy over its training: accuracy[c][t] is task t
// (ReportData::downstream_tasks) at checkpoint c (step steps[c]), in percent.
struct DownstreamCurve {
  std::string name;  // "DoReMi", "baseline"
  std::vector<long> steps;
  std::vector<std::vector<double>> accuracy;
  // The average over the tasks at each checkpoint (what DoReMi's paper plots).
  std::vector<double> average() const {
    std::vector<double> a;
    for (const auto& row : accuracy) {
      double s = 0;
      for (double v : row) s += v;
      a.push_back(row.empty() ? std::numeric_limits<double>::quiet_NaN() : s / double(row.size()));
    }
    return a;
  }
};

struct ReportData {
  std::string title = "DoReMi report";
  std::vector<std::pair<std::string, std::string>> settings;  // shown in the page's header, in this order
  std::vector<std::string> domains;
  std::vector<double> reference_weights;                  // one per domain
  std::vector<double> doremi_weights;                     // ᾱ, one per domain
  std::vector<long> steps;                                // proxy steps (may be empty: no trajectory chart)
  std::vector<std::vector<double>> step_weights;          // α [step][domain], or empty
  std::vector<std::vector<double>> step_average_weights;  // ᾱ [step][domain], or empty
  // Per domain in the order of `domains`, nats per token (PerplexityReport::log_perplexity
  // when its domains are in the same order).
  std::optional<std::vector<double>> baseline_log_perplexity;
  std::optional<std::vector<double>> doremi_log_perplexity;
  std::string baseline_name = "baseline";  // how the two models are named in the perplexity chart/table
  std::string doremi_name = "DoReMi";
  // Downstream accuracy against training step, one curve per model (empty: no such section).
  std::vector<std::string> downstream_tasks;
  std::vector<DownstreamCurve> downstream;
};

namespace report_detail {

inline std::string html_table_number(double v, const char* format) { return xml_escape(format_value(format, v)); }

inline double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? std::numeric_limits<double>::quiet_NaN() : s / double(v.size());
}

inline std::size_t argmax(const std::vector<double>& v) {
  std::size_t best = 0;
  for (std::size_t i = 1; i < v.size(); ++i)
    if (v[i] > v[best] || std::isnan(v[best])) best = i;
  return best;
}

// The same chart inside the page: drop the fixed size so it scales with the
// page width (the viewBox keeps its proportions).
inline std::string inline_svg(const std::string& svg) {
  std::string s = svg;
  const auto end = s.find('>');
  for (const char* attr : {" width=\"", " height=\""}) {
    const auto at = s.find(attr);
    if (at == std::string::npos || at > end) continue;
    const auto close = s.find('"', at + std::string_view(attr).size());
    s.erase(at, close + 1 - at);
  }
  return s;
}

// Throws doremi::Error unless every per-domain vector has one value per domain.
inline void check_report_data(const ReportData& r) {
  const std::size_t k = r.domains.size();
  if (k == 0) fail("write_report: no domains");
  auto check = [&](const std::vector<double>& v, const char* what) {
    if (v.size() != k) fail("write_report: {} domains but {} {}", k, v.size(), what);
  };
  check(r.reference_weights, "reference weights");
  check(r.doremi_weights, "DoReMi weights");
  if (r.baseline_log_perplexity) check(*r.baseline_log_perplexity, "baseline log-perplexities");
  if (r.doremi_log_perplexity) check(*r.doremi_log_perplexity, "DoReMi log-perplexities");
  for (const auto& c : r.downstream) {
    if (r.downstream_tasks.empty()) fail("write_report: downstream curves but no downstream tasks");
    if (c.accuracy.size() != c.steps.size())
      fail("write_report: downstream curve '{}' has {} steps but {} rows of accuracies", c.name, c.steps.size(),
           c.accuracy.size());
    for (std::size_t s = 0; s < c.accuracy.size(); ++s)
      if (c.accuracy[s].size() != r.downstream_tasks.size())
        fail("write_report: downstream curve '{}' has {} accuracies at step {} for {} tasks", c.name,
             c.accuracy[s].size(), c.steps[s], r.downstream_tasks.size());
  }
  for (const auto* m : {&r.step_weights, &r.step_average_weights}) {
    const char* what = m == &r.step_weights ? "per-step weights" : "per-step average weights";
    if (m->empty()) continue;
    if (m->size() != r.steps.size()) fail("write_report: {} steps but {} rows of {}", r.steps.size(), m->size(), what);
    for (std::size_t s = 0; s < m->size(); ++s)
      if ((*m)[s].size() != k)
        fail("write_report: {} of step {} have {} values for {} domains", what, r.steps[s], (*m)[s].size(), k);
  }
}

// The report's SVG documents ("" where there is nothing to draw) and how many
// points the trajectory charts draw per series.
struct ReportCharts {
  std::string alpha, average, weights, perplexity;
  std::size_t alpha_points = 0, average_points = 0;
  // Downstream: (file name, SVG) per task, then the average's; empty without curves.
  std::vector<std::pair<std::string, std::string>> downstream;
};

// A task's chart file name: downstream_<name>.svg, the name reduced to
// [A-Za-z0-9_-] (others become '_').
inline std::string downstream_chart_name(std::string_view task) {
  std::string n = "downstream_";
  for (char c : task) n += (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-') ? c : '_';
  return n + ".svg";
}

// One small chart per task and one of the average: accuracy against the
// main models' training step, a line per model (on the union of their steps;
// a model without a checkpoint at a step has no point there).
inline std::vector<std::pair<std::string, std::string>> downstream_charts(const ReportData& r) {
  std::vector<std::pair<std::string, std::string>> out;
  if (r.downstream.empty()) return out;
  std::vector<long> steps;
  for (const auto& c : r.downstream) steps.insert(steps.end(), c.steps.begin(), c.steps.end());
  std::sort(steps.begin(), steps.end());
  steps.erase(std::unique(steps.begin(), steps.end()), steps.end());
  std::vector<std::string> names;
  std::vector<std::vector<double>> averages;
  for (const auto& c : r.downstream) names.push_back(c.name), averages.push_back(c.average());
  const std::size_t nt = r.downstream_tasks.size();
  auto chart = [&](std::size_t task, const std::string& title) {  // task == nt: the average
    std::vector<std::vector<double>> m(steps.size(), std::vector<double>(names.size(),
                                                                         std::numeric_limits<double>::quiet_NaN()));
    for (std::size_t i = 0; i < r.downstream.size(); ++i) {
      const auto& c = r.downstream[i];
      for (std::size_t s = 0; s < c.steps.size(); ++s) {
        const auto at = std::size_t(std::lower_bound(steps.begin(), steps.end(), c.steps[s]) - steps.begin());
        m[at][i] = task == nt ? averages[i][s] : c.accuracy[s][task];
      }
    }
    LineChartOptions o;
    o.title = title;
    o.x_label = "main model's training step";
    o.y_label = "accuracy (%)";
    o.width = 500;
    o.height = 300;
    o.legend_value = LegendValue::last;
    o.value_format = "{:.1f}";
    o.y_from_zero = true;
    return svg_line_chart(steps, m, names, o);
  };
  for (std::size_t t = 0; t < nt; ++t)
    out.emplace_back(downstream_chart_name(r.downstream_tasks[t]), chart(t, r.downstream_tasks[t]));
  out.emplace_back("downstream_average.svg", chart(nt, fmt::format("average of {} task{}", nt, nt == 1 ? "" : "s")));
  return out;
}

inline ReportCharts report_charts(const ReportData& r) {
  const std::size_t k = r.domains.size();
  // α per step is noisy: its legend ranks by the mean over steps (≈ the
  // output ᾱ); the running average's by its last value (the output itself).
  // Per-step α of 22 domains is a tangle at one point per pixel; drawn as
  // means over windows of steps its movements stay readable. ᾱ is smooth.
  const std::size_t alpha_points = 250, average_points = LineChartOptions{}.max_points;
  auto trajectory = [&](const std::vector<std::vector<double>>& m, bool average) {
    if (m.empty()) return std::string();
    LineChartOptions o;
    o.max_points = average ? average_points : alpha_points;
    o.title = average ? "Running average of the domain weights (\u1fb1) over the proxy's steps"
                      : "Domain weights (\u03b1) over the proxy's steps";
    o.y_label = average ? "average domain weight \u1fb1" : "domain weight \u03b1";
    o.x_label = "proxy step";
    o.legend_value = average ? LegendValue::last : LegendValue::mean;
    o.guide = 1.0 / double(k);
    o.guide_label = fmt::format("uniform 1/{}", k);
    return svg_line_chart(r.steps, m, r.domains, o);
  };
  const std::string alpha_svg = trajectory(r.step_weights, false);
  const std::string average_svg = trajectory(r.step_average_weights, true);
  BarChartOptions wo;
  wo.title = "Domain weights: reference and DoReMi";
  wo.value_label = "domain weight";
  wo.order = BarOrder::descending;
  wo.sort_series = 1;
  wo.value_format = "{:.4f}";
  const std::string weights_svg = svg_bar_chart(
      r.domains,
      {{"reference", r.reference_weights, ""}, {"DoReMi (\u1fb1, the average of \u03b1)", r.doremi_weights, ""}}, wo);
  std::string ppl_svg;
  std::vector<BarSeries> ppl;
  if (r.baseline_log_perplexity) ppl.push_back({r.baseline_name, *r.baseline_log_perplexity, bar_color(0)});
  if (r.doremi_log_perplexity) ppl.push_back({r.doremi_name, *r.doremi_log_perplexity, bar_color(1)});
  if (!ppl.empty()) {
    BarChartOptions po;
    po.title = "Held-out log-perplexity per domain (lower is better)";
    po.value_label = "log-perplexity (nats per token)";
    po.value_format = "{:.3f}";
    ppl_svg = svg_bar_chart(r.domains, ppl, po);
  }
  return {alpha_svg, average_svg, weights_svg, ppl_svg, alpha_points, average_points, downstream_charts(r)};
}

// The page's head, title, settings and (with both perplexities) summary line.
inline void html_header(std::string& h, const ReportData& r) {
  const std::size_t k = r.domains.size();
  h += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n";
  h += fmt::format("<title>{}</title>\n", xml_escape(r.title));
  h += R"(<style>
body { font-family: DejaVu Sans, Helvetica, Arial, sans-serif; color: #222; margin: 24px auto; max-width: 1040px; padding: 0 16px; }
h1 { font-size: 24px; margin: 0 0 12px; }
h2 { font-size: 18px; margin: 32px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e6e6e6; }
th { text-align: left; background: #f2f2f2; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.summary td { font-weight: bold; border-top: 2px solid #bbb; }
table.settings td:first-child { color: #555; }
p.summary { font-size: 15px; background: #f4f8fc; border-left: 4px solid #1f77b4; padding: 8px 12px; }
.better { color: #1a7f37; }
.worse { color: #b42318; }
figure { margin: 12px 0; }
figure svg { width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 12px; color: #666; }
div.small-charts { display: flex; flex-wrap: wrap; gap: 0 2%; }
div.small-charts figure { width: 49%; margin: 6px 0; }
</style>
</head>
<body>
)";
  h += fmt::format("<h1>{}</h1>\n", xml_escape(r.title));
  if (!r.settings.empty()) {
    h += "<table class=\"settings\">\n";
    for (const auto& [key, value] : r.settings)
      h += fmt::format("<tr><td>{}</td><td>{}</td></tr>\n", xml_escape(key), xml_escape(value));
    h += "</table>\n";
  }
  h += fmt::format("<p>{} domains", k);
  if (!r.steps.empty())
    h += fmt::format(", {} logged proxy steps ({} to {})", r.steps.size(), r.steps.front(), r.steps.back());
  h += ".</p>\n";
  if (r.baseline_log_perplexity && r.doremi_log_perplexity) {
    const auto& b = *r.baseline_log_perplexity;
    const auto& d = *r.doremi_log_perplexity;
    std::size_t better = 0;
    for (std::size_t i = 0; i < k; ++i) better += d[i] < b[i];
    const double ab = mean_of(b), ad = mean_of(d), wb = b[argmax(b)], wd = d[argmax(d)];
    h += fmt::format(
        "<p class=\"summary\">Log-perplexity, {0} \u2192 {1}: uniform average {2} \u2192 {3} ({4}), worst case "
        "{5} \u2192 {6} ({7}); {1} is better on {8} of {9} domains.</p>\n",
        xml_escape(r.baseline_name), xml_escape(r.doremi_name), html_table_number(ab, "{:.4f}"),
        html_table_number(ad, "{:.4f}"), html_table_number(ad - ab, "{:+.4f}"), html_table_number(wb, "{:.4f}"),
        html_table_number(wd, "{:.4f}"), html_table_number(wd - wb, "{:+.4f}"), better, k);
  }
}

// The final weights' chart and table.
inline void html_weights(std::string& h, const ReportData& r, const ReportCharts& c) {
  const std::size_t k = r.domains.size();
  h += "<h2 id=\"weights\">Domain weights</h2>\n";
  h += "<figure>\n" + inline_svg(c.weights) +
       "<figcaption>final_weights.svg: sorted by the DoReMi weight.</figcaption>\n</figure>\n";
  h += "<table class=\"weights\">\n<tr><th>domain</th><th class=\"num\">reference weight</th>"
       "<th class=\"num\">DoReMi weight</th><th class=\"num\">DoReMi / reference</th></tr>\n";
  for (std::size_t i = 0; i < k; ++i) {
    const double ratio = r.reference_weights[i] > 0 ? r.doremi_weights[i] / r.reference_weights[i]
                                                    : std::numeric_limits<double>::quiet_NaN();
    h +=
        fmt::format("<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n",
                    xml_escape(r.domains[i]), html_table_number(r.reference_weights[i], "{:.4f}"),
                    html_table_number(r.doremi_weights[i], "{:.4f}"), html_table_number(ratio, "{:.2f}"));
  }
  double ref_sum = 0, dw_sum = 0;
  for (std::size_t i = 0; i < k; ++i) ref_sum += r.reference_weights[i], dw_sum += r.doremi_weights[i];
  h += fmt::format(
      "<tr class=\"summary\"><td>sum</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td></td></tr>\n",
      html_table_number(ref_sum, "{:.4f}"), html_table_number(dw_sum, "{:.4f}"));
  h += "</table>\n";
}

// The weights-over-steps charts, when there are any.
inline void html_trajectory(std::string& h, const ReportData& r, const ReportCharts& c) {
  if (!c.alpha.empty() || !c.average.empty()) {
    h += "<h2 id=\"trajectory\">Domain weights over the proxy's steps</h2>\n";
    auto thinned = [&](std::size_t points) {
      if (r.steps.size() <= points) return std::string();
      return fmt::format(" The {} logged steps are drawn as {} points, each the mean of ~{} consecutive steps.",
                         r.steps.size(), points, (r.steps.size() + points - 1) / points);
    };
    if (!c.average.empty())
      h += "<figure>\n" + inline_svg(c.average) +
           "<figcaption>average_weights_over_steps.svg: the running average \u1fb1 after each step, whose last "
           "value is the run's output; legend sorted by that last value." +
           thinned(c.average_points) + "</figcaption>\n</figure>\n";
    if (!c.alpha.empty())
      h += "<figure>\n" + inline_svg(c.alpha) +
           "<figcaption>weights_over_steps.svg: the domain weights \u03b1 after each step's update; legend sorted "
           "by their mean over all steps." +
           thinned(c.alpha_points) + "</figcaption>\n</figure>\n";
  }
}

// The perplexity chart and table, when any perplexity is given.
inline void html_perplexity(std::string& h, const ReportData& r, const ReportCharts& c) {
  const std::size_t k = r.domains.size();
  if (!c.perplexity.empty()) {
    const bool both = r.baseline_log_perplexity && r.doremi_log_perplexity;
    h += "<h2 id=\"perplexity\">Held-out log-perplexity</h2>\n";
    h += "<figure>\n" + inline_svg(c.perplexity) +
         "<figcaption>perplexity.svg: nats per target token on each domain's validation data.</figcaption>\n"
         "</figure>\n";
    h += "<table class=\"perplexity\">\n<tr><th>domain</th>";
    if (r.baseline_log_perplexity) h += fmt::format("<th class=\"num\">{}</th>", xml_escape(r.baseline_name));
    if (r.doremi_log_perplexity) h += fmt::format("<th class=\"num\">{}</th>", xml_escape(r.doremi_name));
    if (both) h += "<th class=\"num\">difference</th>";
    h += "</tr>\n";
    auto row = [&](std::string_view label, std::optional<double> b, std::optional<double> d, bool summary) {
      h += fmt::format("<tr{}><td>{}</td>", summary ? " class=\"summary\"" : "", label);
      if (b) h += fmt::format("<td class=\"num\">{}</td>", html_table_number(*b, "{:.4f}"));
      if (d) h += fmt::format("<td class=\"num\">{}</td>", html_table_number(*d, "{:.4f}"));
      if (b && d) {
        const double diff = *d - *b;
        const char* cls = diff < 0 ? "num better" : diff > 0 ? "num worse" : "num";
        h += fmt::format("<td class=\"{}\">{}</td>", cls, html_table_number(diff, "{:+.4f}"));
      }
      h += "</tr>\n";
    };
    auto at = [](const std::optional<std::vector<double>>& v, std::size_t i) -> std::optional<double> {
      if (!v) return std::nullopt;
      return (*v)[i];
    };
    for (std::size_t i = 0; i < k; ++i)
      row(xml_escape(r.domains[i]), at(r.baseline_log_perplexity, i), at(r.doremi_log_perplexity, i), false);
    auto summary = [&](const std::optional<std::vector<double>>& v, bool worst) -> std::optional<double> {
      if (!v) return std::nullopt;
      return worst ? (*v)[argmax(*v)] : mean_of(*v);
    };
    row("uniform average", summary(r.baseline_log_perplexity, false), summary(r.doremi_log_perplexity, false), true);
    row("worst case", summary(r.baseline_log_perplexity, true), summary(r.doremi_log_perplexity, true), true);
    h += "</table>\n";
    std::vector<std::string> worst;
    if (r.baseline_log_perplexity)
      worst.push_back(fmt::format("{}: {}", xml_escape(r.baseline_name),
                                  xml_escape(r.domains[argmax(*r.baseline_log_perplexity)])));
    if (r.doremi_log_perplexity)
      worst.push_back(
          fmt::format("{}: {}", xml_escape(r.doremi_name), xml_escape(r.domains[argmax(*r.doremi_log_perplexity)])));
    h += fmt::format("<p>Worst domain \u2014 {}.</p>\n", fmt::join(worst, "; "));
  }
}

// The downstream accuracy charts and the table of each model's last checkpoint.
inline void html_downstream(std::string& h, const ReportData& r, const ReportCharts& c) {
  if (r.downstream.empty()) return;
  h += "<h2 id=\"downstream\">Downstream accuracy over training</h2>\n<div class=\"small-charts\">\n";
  for (const auto& [name, svg] : c.downstream)
    h += "<figure>\n" + inline_svg(svg) + fmt::format("<figcaption>{}</figcaption>\n</figure>\n", xml_escape(name));
  h += "</div>\n<p>Exact-match accuracy (%) of the main models' checkpoints; the average is over the tasks.</p>\n";
  // The table: each model's last checkpoint.
  h += "<table class=\"downstream\">\n<tr><th>task</th>";
  for (const auto& m : r.downstream) {
    const std::string step = m.steps.empty() ? std::string("no checkpoint") : fmt::format("step {}", m.steps.back());
    h += fmt::format("<th class=\"num\">{} ({})</th>", xml_escape(m.name), step);
  }
  const bool two = r.downstream.size() == 2;
  if (two) h += "<th class=\"num\">difference</th>";
  h += "</tr>\n";
  const std::size_t nt = r.downstream_tasks.size();
  for (std::size_t t = 0; t <= nt; ++t) {
    const bool avg = t == nt;
    h += fmt::format("<tr{}><td>{}</td>", avg ? " class=\"summary\"" : "",
                     avg ? std::string("average") : xml_escape(r.downstream_tasks[t]));
    std::vector<double> last;
    for (const auto& m : r.downstream) {
      const double v = m.steps.empty() ? std::numeric_limits<double>::quiet_NaN()
                                       : (avg ? m.average().back() : m.accuracy.back()[t]);
      last.push_back(v);
      h += fmt::format("<td class=\"num\">{}</td>", html_table_number(v, "{:.2f}"));
    }
    if (two) {
      const double diff = last[1] - last[0];
      const char* cls = diff > 0 ? "num better" : diff < 0 ? "num worse" : "num";
      h += fmt::format("<td class=\"{}\">{}</td>", cls, html_table_number(diff, "{:+.2f}"));
    }
    h += "</tr>\n";
  }
  h += "</table>\n";
}

inline std::string report_html(const ReportData& r, const ReportCharts& c) {
  std::string h;
  html_header(h, r);
  html_weights(h, r, c);
  html_trajectory(h, r, c);
  html_perplexity(h, r, c);
  html_downstream(h, r, c);
  h += "</body>\n</html>\n";
  return h;
}

}  // namespace report_detail

// Writes into `dir` (created if missing), each file atomically:
//   weights_over_steps.svg  α per step (when `step_weights` is given)
//   average_weights_over_steps.svg  ᾱ per step (when `step_average_weights` is given)
//   final_weights.svg       reference against DoReMi weights per domain
//   perplexity.svg          per-domain log-perplexity (when any is given)
//   downstream_<task>.svg, downstream_average.svg
//                           accuracy against step per model (when `downstream` is given)
//   report.html             one self-contained page: the settings, the charts
//                           inlined, and tables of weights and perplexities
//                           (with the uniform average and the worst case).
// A stale chart of an earlier report that this one does not write is removed.
inline void write_report(const std::filesystem::path& dir, const ReportData& r) {
  using namespace report_detail;
  namespace fs = std::filesystem;
  check_report_data(r);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail("write_report: cannot create {}: {}", dir.string(), ec.message());
  const ReportCharts c = report_charts(r);
  const std::string h = report_html(r, c);
  auto write_or_remove = [&](const char* name, const std::string& svg) {
    if (!svg.empty()) write_file_atomic(dir / name, svg);
    else fs::remove(dir / name, ec);
  };
  write_or_remove("weights_over_steps.svg", c.alpha);
  write_or_remove("average_weights_over_steps.svg", c.average);
  write_file_atomic(dir / "final_weights.svg", c.weights);
  write_or_remove("perplexity.svg", c.perplexity);
  std::set<std::string> written;
  for (const auto& [name, svg] : c.downstream) write_file_atomic(dir / name, svg), written.insert(name);
  for (const auto& e : fs::directory_iterator(dir, ec)) {  // a stale task's chart
    const std::string n = e.path().filename().string();
    if (n.starts_with("downstream_") && n.ends_with(".svg") && !written.count(n)) fs::remove(e.path(), ec);
  }
  write_file_atomic(dir / "report.html", h);
}

}  // namespace doremi
